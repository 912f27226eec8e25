//! The client's link to RabbitMQ: one connection and one confirm-mode channel, opened again with
//! backoff (for at most `reconnect_max_wait`) when the broker drops them.
//!
//! Operations take the current channel ([`BrokerLink::current`]: a lock and a clone, no round
//! trip). When one fails because the connection or channel is gone ([`is_lost`]), it asks for a
//! replacement with [`BrokerLink::replace`], naming the generation that failed: callers failing
//! at once (every publish of a window) reconnect once, and the others get the new channel.
//! A replacement declares the topology again and re-enables publisher confirms.
//!
//! With several nodes (`amqp_urls`), the link remembers which node it is on; a replacement
//! connection tries the nodes after it first and the lost node last (failover).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ErrorKind};
use rask_common::{broker, Pool, Settings};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// First and largest pause between attempts to reconnect (as workers do).
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The name of the client's connections in the management UI.
const ROLE: &str = "rask client";

/// One generation of the connection: what operations publish and declare on.
#[derive(Clone)]
pub(crate) struct Live {
    /// The confirm-mode channel.
    pub(crate) channel: Channel,
    connection: Arc<Connection>,
    generation: u64,
    /// The index of the connection's node in [`Settings::amqp_nodes`].
    node: usize,
}

/// The client's connection to RabbitMQ, replaced when lost.
pub(crate) struct BrokerLink {
    settings: Settings,
    live: Mutex<Live>,
    /// The pools (other than the default one) whose queues were declared, with the generation
    /// of the connection they were declared on.
    pools: Mutex<Vec<(Pool, u64)>>,
    /// Held while reconnecting, so that one caller reconnects and the others wait for it.
    reconnecting: tokio::sync::Mutex<()>,
    closed: AtomicBool,
}

impl BrokerLink {
    /// Connects once (no retry: a client that cannot reach the broker at start fails at once),
    /// declares the topology and enables confirms.
    pub(crate) async fn connect(settings: &Settings) -> Result<Self> {
        let (connection, node) = broker::connect_from(settings, ROLE, 0).await?;
        let connection = Arc::new(connection);
        let channel = open_channel(&connection, settings).await?;
        Ok(BrokerLink {
            settings: settings.clone(),
            live: Mutex::new(Live {
                channel,
                connection,
                generation: 0,
                node,
            }),
            pools: Mutex::new(Vec::new()),
            reconnecting: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
        })
    }

    /// The current connection and channel (which may have been lost since: operations on it
    /// then fail with an error [`is_lost`] recognises).
    ///
    /// # Errors
    /// [`Error::Closed`] once the client is closed.
    pub(crate) fn current(&self) -> Result<Live> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(self.lock().clone())
    }

    /// A working channel in place of `broken`'s: the current one if another caller already
    /// replaced it, else a new channel (on the same connection if it is still up) or a new
    /// connection, retried with backoff until `since + reconnect_max_wait`, where `since` is
    /// when the caller first lost the broker.
    ///
    /// # Errors
    /// [`Error::Reconnect`] if the broker stays unreachable; [`Error::Closed`] once closed.
    pub(crate) async fn replace(&self, broken: &Live, since: Instant) -> Result<Live> {
        let _one_at_a_time = self.reconnecting.lock().await;
        let current = self.current()?;
        if current.generation != broken.generation {
            return Ok(current);
        }
        let deadline = since + self.settings.reconnect_max_wait;
        let mut pause = BACKOFF.0;
        let mut attempt = 1u32;
        loop {
            match self.reopen(broken).await {
                Ok((connection, channel, node)) => {
                    let live = Live {
                        channel,
                        connection,
                        generation: broken.generation + 1,
                        node,
                    };
                    *self.lock() = live.clone();
                    tracing::warn!(
                        attempt,
                        outage = ?since.elapsed(),
                        "reconnected to the broker; republishing what was not confirmed"
                    );
                    return Ok(live);
                }
                Err(e) => {
                    let now = Instant::now();
                    if now >= deadline || self.closed.load(Ordering::Acquire) {
                        return Err(Error::Reconnect {
                            waited: since.elapsed(),
                            last: Box::new(e),
                        });
                    }
                    tracing::warn!(error = %e, attempt, retry_in = ?pause, "reconnecting to the broker failed");
                    tokio::time::sleep(pause.min(deadline - now)).await;
                    pause = (pause * 2).min(BACKOFF.1);
                    attempt += 1;
                }
            }
        }
    }

    /// Runs `operation` on the current channel, and again on a replacement each time it fails
    /// because the broker was lost (for at most `reconnect_max_wait` in all). For operations
    /// that are safe to repeat: declarations, purges.
    ///
    /// # Errors
    /// The operation's own error, or [`BrokerLink::replace`]'s.
    pub(crate) async fn run<T, F, Fut>(&self, mut operation: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut live = self.current()?;
        let mut since = None;
        loop {
            match operation(live.channel.clone()).await {
                Err(e) if is_lost(&e) => {
                    tracing::warn!(error = %e, "lost the broker; reconnecting");
                    let since = *since.get_or_insert_with(Instant::now);
                    live = self.replace(&live, since).await?;
                }
                other => return other,
            }
        }
    }

    /// Declares the queues of `pool` (its task queue shards, delay ladder and dead-letter queue,
    /// as [`broker::declare_topology`] does for the default pool) once per connection, so that
    /// its tasks are routed even before a worker of the pool has started. Nothing for the
    /// default pool, declared with the connection.
    ///
    /// # Errors
    /// [`Error::Common`] if RabbitMQ refuses the declarations or the connection fails.
    pub(crate) async fn declare_pool(&self, pool: &Pool) -> Result<()> {
        if pool.is_default() {
            return Ok(());
        }
        let live = self.current()?;
        let declared = |pools: &MutexGuard<'_, Vec<(Pool, u64)>>| {
            pools
                .iter()
                .any(|(p, generation)| p == pool && *generation == live.generation)
        };
        if declared(&self.pools.lock().unwrap_or_else(PoisonError::into_inner)) {
            return Ok(());
        }
        let channel =
            broker::declare_topology(&live.connection, &self.settings.for_pool(pool)).await?;
        let _ = channel.close(200, "pool declared".into()).await;
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools.retain(|(p, _)| p != pool);
        pools.push((pool.clone(), live.generation));
        Ok(())
    }

    /// The pools whose queues this link declared ([`BrokerLink::declare_pool`]).
    pub(crate) fn declared_pools(&self) -> Vec<Pool> {
        let pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools.iter().map(|(pool, _)| pool.clone()).collect()
    }

    /// Closes the connection; later operations fail with [`Error::Closed`] instead of
    /// reconnecting.
    ///
    /// # Errors
    /// [`Error::Broker`] if the close handshake fails.
    pub(crate) async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        let connection = self.lock().connection.clone();
        connection.close(200, "client closing".into()).await?;
        Ok(())
    }

    /// A new channel on `broken`'s connection if it is still up (only the channel was closed),
    /// else a new connection (to the first node that answers, from the one after `broken`'s)
    /// and channel; with the index of the node.
    async fn reopen(&self, broken: &Live) -> Result<(Arc<Connection>, Channel, usize)> {
        let (connection, node) = if broken.connection.status().connected() {
            (broken.connection.clone(), broken.node)
        } else {
            let (connection, node) =
                broker::connect_from(&self.settings, ROLE, broken.node + 1).await?;
            (Arc::new(connection), node)
        };
        let channel = open_channel(&connection, &self.settings).await?;
        Ok((connection, channel, node))
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        // A panic while holding the lock cannot leave `Live` half-written (it is replaced whole).
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A channel on `connection` with the topology declared and publisher confirms on.
async fn open_channel(connection: &Connection, settings: &Settings) -> Result<Channel> {
    let channel = broker::declare_topology(connection, settings).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Whether `error` means the connection or the channel is gone (the broker restarted, the
/// network failed), so that the same operation may succeed on a new one. A refusal by a live
/// broker (a nack, an unroutable task, a declaration with other arguments) is not.
pub(crate) fn is_lost(error: &Error) -> bool {
    let lapin = match error {
        Error::Broker(e) | Error::Common(rask_common::Error::Broker(e)) => e,
        _ => return false,
    };
    match lapin.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidChannel(_)
        | ErrorKind::MissingHeartbeatError => true,
        ErrorKind::ProtocolError(_) => lapin.is_amqp_hard_error(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_are_told_from_refusals() {
        let io = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_lost(&Error::Broker(io.clone())));
        assert!(is_lost(&Error::Common(rask_common::Error::Broker(io))));
        let key = rask_common::TaskKey::new("k").unwrap();
        assert!(!is_lost(&Error::Nacked(key)));
        assert!(!is_lost(&Error::Closed));
    }
}
