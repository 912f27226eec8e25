//! The tasks this worker must not run: revocations (`client.cancel(..).force()`, see
//! [`rask_common::revocations`]) held in memory, so that checking a task costs no round trip.
//!
//! [`Revocations`] is the in-memory set: checked at admission ([`Revocations::is_revoked`], a
//! load of a counter when nothing is revoked) and watched by each running task
//! ([`Revocations::revoked`], which wakes only when the set grows). [`listen`] keeps it up to
//! date beside the task loop: it subscribes to the revocation channel, reads the whole set from
//! Redis once subscribed, and again every [`RESCAN_EVERY`] pings of the subscription (pinged every
//! `redis_ping_interval`, replaced when a ping goes unanswered), so that an announcement lost to
//! a partition delays a revocation, never loses it. The task loop also reads the whole set
//! before it consumes on each connection ([`Revocations::load`]), so that a worker starting
//! after a revocation honours it from its first delivery. Expired revocations (after the
//! result TTL) are dropped whenever the set is merged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rask_common::pinged;
use rask_common::revocations::{unix_ms, Revoked};
use rask_common::{Settings, Store, TaskKey};
use tokio::sync::watch;

/// Ping intervals between two reads of the whole set.
const RESCAN_EVERY: u32 = 6;

/// First and largest pause between attempts to subscribe again.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The revoked tasks known to this worker, with their expiry (Unix milliseconds).
pub(crate) struct Revocations {
    keys: RwLock<HashMap<TaskKey, u64>>,
    /// How many entries `keys` holds: the admission check reads only this when it is 0.
    count: AtomicUsize,
    /// Bumped whenever revocations are added, waking [`Revocations::revoked`] waiters.
    added: watch::Sender<u64>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations {
            keys: RwLock::default(),
            count: AtomicUsize::new(0),
            added: watch::Sender::new(0),
        }
    }
}

impl Revocations {
    /// Whether `key` is revoked (and its revocation not expired).
    pub(crate) fn is_revoked(&self, key: &TaskKey) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        keys.get(key)
            .is_some_and(|expires| *expires > unix_ms(SystemTime::now()))
    }

    /// Completes once `key` is revoked (at once if it is already).
    pub(crate) async fn revoked(&self, key: &TaskKey) {
        let mut added = self.added.subscribe();
        loop {
            if self.is_revoked(key) {
                return;
            }
            if added.changed().await.is_err() {
                // The sender lives as long as `self`: unreachable, but never a busy loop.
                return std::future::pending().await;
            }
        }
    }

    /// Adds `entries` (key, expiry in Unix milliseconds), dropping expired ones; wakes the
    /// waiters of [`Revocations::revoked`] if one is new or later.
    pub(crate) fn merge(&self, entries: impl IntoIterator<Item = (TaskKey, u64)>) {
        let now = unix_ms(SystemTime::now());
        let mut grew = false;
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        for (key, expires) in entries {
            if expires <= now {
                continue;
            }
            let entry = keys.entry(key).or_insert(0);
            if *entry < expires {
                *entry = expires;
                grew = true;
            }
        }
        keys.retain(|_, expires| *expires > now);
        self.count.store(keys.len(), Ordering::Release);
        drop(keys);
        if grew {
            self.added.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Reads every revocation in force from `store` and merges them.
    ///
    /// # Errors
    /// [`rask_common::Error::Store`] if Redis fails.
    pub(crate) async fn load(&self, store: &Store) -> rask_common::Result<()> {
        self.merge(store.revocations().await?);
        Ok(())
    }
}

/// Keeps `revocations` up to date (see the module docs), for as long as it is polled (the
/// worker aborts it when it stops).
pub(crate) async fn listen(settings: Settings, revocations: std::sync::Arc<Revocations>) {
    let mut pause = BACKOFF.0;
    let mut turn = 0usize;
    loop {
        let (lost, subscribed) = follow(&settings, &revocations, &mut turn).await;
        if subscribed {
            pause = BACKOFF.0;
        }
        tracing::warn!(error = %lost, retry_in = ?pause, "revocation subscription lost; subscribing again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(BACKOFF.1);
    }
}

/// One subscription's worth of [`listen`], on the next Redis node in turn: returns why it
/// ended, and whether it had subscribed and read the set.
async fn follow(
    settings: &Settings,
    revocations: &Revocations,
    turn: &mut usize,
) -> (String, bool) {
    match subscribed(settings, revocations, turn).await {
        Err(lost) => (lost, false),
        Ok((mut sink, mut messages, store)) => (
            relay(settings, revocations, &store, &mut sink, &mut messages).await,
            true,
        ),
    }
}

/// A subscription split in its two halves, and the store to read the whole set from.
type Halves = (redis::aio::PubSubSink, redis::aio::PubSubStream, Store);

/// Subscribes to the revocation channel on the next node in turn, then reads the whole set.
async fn subscribed(
    settings: &Settings,
    revocations: &Revocations,
    turn: &mut usize,
) -> Result<Halves, String> {
    let ping = settings.redis_ping_interval;
    let clients = match rask_common::store::subscription_clients(settings) {
        Ok(clients) if !clients.is_empty() => clients,
        Ok(_) => return Err("no Redis node to subscribe to".to_owned()),
        Err(e) => return Err(e.to_string()),
    };
    let client = &clients[*turn % clients.len()];
    *turn += 1;
    let store = match Store::connect(settings).await {
        Ok(store) => store,
        Err(e) => return Err(e.to_string()),
    };
    let channel = store.keys().revoked_channel();
    let subscribed = tokio::time::timeout(ping, async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    })
    .await;
    let pubsub = match subscribed {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("subscribing took over {ping:?}")),
    };
    // Subscribed first, then read: nothing revoked in between is missed.
    if let Err(e) = revocations.load(&store).await {
        return Err(e.to_string());
    }
    let (sink, messages) = pubsub.split();
    Ok((sink, messages, store))
}

/// Merges the revocations announced on the subscription, pings it every
/// `redis_ping_interval` and reads the whole set every [`RESCAN_EVERY`] pings
/// ([`pinged::relay`]); returns why the subscription is lost.
async fn relay(
    settings: &Settings,
    revocations: &Revocations,
    store: &Store,
    sink: &mut redis::aio::PubSubSink,
    messages: &mut redis::aio::PubSubStream,
) -> String {
    let announced = |message: &redis::Msg| match Revoked::decode(message.get_payload_bytes()) {
        Ok(batch) => {
            tracing::info!(tasks = batch.keys.len(), "tasks revoked");
            let expires = batch.expires_ms;
            revocations.merge(batch.keys.into_iter().map(|k| (k, expires)));
        }
        Err(e) => tracing::warn!(error = %e, "ignoring a malformed revocation announcement"),
    };
    let ping = settings.redis_ping_interval;
    let rescan = || revocations.load(store);
    pinged::relay(sink, messages, ping, RESCAN_EVERY, announced, rescan)
        .await
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> TaskKey {
        TaskKey::new(k).unwrap()
    }

    #[tokio::test]
    async fn revoked_keys_are_found_until_they_expire() {
        let revocations = Revocations::default();
        assert!(!revocations.is_revoked(&key("a-1")));
        let later = unix_ms(SystemTime::now()) + 60_000;
        revocations.merge([(key("a-1"), later), (key("a-2"), 1)]);
        assert!(revocations.is_revoked(&key("a-1")));
        assert!(!revocations.is_revoked(&key("a-2")), "already expired");
        assert_eq!(revocations.count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_its_key_is_revoked() {
        let revocations = std::sync::Arc::new(Revocations::default());
        let waiter = {
            let revocations = revocations.clone();
            tokio::spawn(async move { revocations.revoked(&key("b-1")).await })
        };
        let later = unix_ms(SystemTime::now()) + 60_000;
        revocations.merge([(key("b-2"), later)]);
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "another key does not wake it for good"
        );
        revocations.merge([(key("b-1"), later)]);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
