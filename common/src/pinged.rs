//! A Redis subscription kept honest: a subscriber only listens, so a connection that died
//! without a FIN (a partition, a crashed host) looks the same as a quiet channel. [`relay`]
//! passes each message on, pings the subscription every interval (the reply arrives on the
//! same connection, after the messages before it), treats an unanswered ping as a lost
//! connection, and asks for a full re-read every few pings, so that a message lost anyway is
//! only late. The client's completion listener and the workers' revocation listener share it.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};

/// Why a pinged subscription ended.
#[derive(Debug)]
pub enum Lost<E> {
    /// The subscription's stream ended (the connection closed).
    Closed,
    /// A ping failed.
    Failed(redis::RedisError),
    /// A ping went unanswered for this long: the connection is taken for dead.
    Unanswered(Duration),
    /// The periodic re-read failed.
    Rescan(E),
}

impl<E: fmt::Display> fmt::Display for Lost<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Closed => f.write_str("the subscription closed"),
            Lost::Failed(e) => write!(f, "PING failed: {e}"),
            Lost::Unanswered(ping) => {
                write!(
                    f,
                    "PING took over {ping:?}: the connection is taken for dead"
                )
            }
            Lost::Rescan(e) => write!(f, "re-reading failed: {e}"),
        }
    }
}

/// Passes each message to `on_message`, pings every `ping`, and after every
/// `rescan_every` answered pings awaits `rescan()`; returns why the subscription ended (it never
/// ends otherwise). Messages arriving while a ping waits stay in the subscription's buffer.
pub async fn relay<E, F, R>(
    sink: &mut PubSubSink,
    messages: &mut PubSubStream,
    ping: Duration,
    rescan_every: u32,
    mut on_message: impl FnMut(&redis::Msg),
    mut rescan: F,
) -> Lost<E>
where
    F: FnMut() -> R,
    R: Future<Output = Result<(), E>>,
{
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + ping, ping);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut until_rescan = rescan_every.max(1);
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => on_message(&message),
                None => return Lost::Closed,
            },
            _ = pings.tick() => {
                match tokio::time::timeout(ping, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Lost::Failed(e),
                    Err(_) => return Lost::Unanswered(ping),
                }
                until_rescan -= 1;
                if until_rescan == 0 {
                    until_rescan = rescan_every.max(1);
                    if let Err(e) = rescan().await {
                        return Lost::Rescan(e);
                    }
                }
            }
        }
    }
}
