//! Delayed tasks (countdown, eta, retry backoffs) wait in the broker, in a fixed ladder of delay
//! queues: [`LEVELS`] queues, level `k` holding its messages for exactly 2^k ms, whatever delays
//! are asked for. A delay of `d` ms is the sum of the levels of the bits set in `d`: the message
//! waits in each of those queues in turn, from the highest down, then enters the task exchange.
//! So any delay from 1 ms to [`MAX_DELAY`] is exact to the millisecond (never shorter, later only
//! by the broker's hops), and the broker holds a fixed, small set of queues, however many
//! distinct delays jittered retries or countdowns ask for.
//!
//! Routing, for the task queue `{queue}` (one ladder per task queue name):
//!
//! - Level `k` has a headers exchange and a durable classic queue, both `{queue}.delay.level{k}`
//!   (`k` = 0 … 31). The queue's `x-message-ttl` is 2^k ms; it dead-letters into the exchange of
//!   level `k - 1` (level 0's: into the task exchange), keeping the message's routing key.
//! - A delayed message carries one boolean header per level from its highest set bit `h` down
//!   to 0, `rask-delay-{k}` (true when bit `k` of the delay is set), and is published to the
//!   exchange of level `h` with its task queue shard as routing key. The exchange of level `k`
//!   routes a message whose header `k` is true to its queue, one whose header is false on to
//!   the exchange of level `k - 1` (exchange-to-exchange binding; level 0's: to the task
//!   exchange), so the message waits exactly in the levels of its set bits.
//!
//! Every producer and worker declares the whole ladder with the rest of the topology
//! ([`crate::broker::declare_topology`]): the queues never change, so nothing is declared per
//! delay and no queue argument depends on one.

use std::time::Duration;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::error::{Error, Result};
use crate::settings::Settings;

/// How many levels the ladder has.
pub const LEVELS: u32 = 32;

/// The longest delay the ladder holds: 2^32 - 1 ms, about 49.7 days.
pub const MAX_DELAY: Duration = Duration::from_millis((1u64 << LEVELS) - 1);

/// The header naming whether a message waits at level `level` (not `x-…`: a headers exchange
/// ignores binding arguments that start with `x-`).
fn header(level: u32) -> String {
    format!("rask-delay-{level}")
}

/// The name of the exchange and the queue of level `level` of `settings`' task queue.
pub fn level_name(settings: &Settings, level: u32) -> String {
    format!("{}.delay.level{level}", settings.queue)
}

/// The names of every delay queue of `settings` (for purging them).
pub fn queue_names(settings: &Settings) -> Vec<String> {
    (0..LEVELS)
        .map(|level| level_name(settings, level))
        .collect()
}

/// How a message that must wait `delay` is published: to which exchange, with which headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Ladder {
    /// The exchange of the delay's highest level.
    pub exchange: String,
    /// The `rask-delay-{k}` headers, from that level down to 0.
    pub headers: FieldTable,
}

impl Ladder {
    /// The way down the ladder for `delay` in whole milliseconds, rounded up (so that a task
    /// never runs early); `None` for a delay under a millisecond (no wait).
    ///
    /// # Errors
    /// [`Error::DelayTooLong`] for a delay over [`MAX_DELAY`].
    pub fn for_delay(settings: &Settings, delay: Duration) -> Result<Option<Self>> {
        if delay > MAX_DELAY {
            return Err(Error::DelayTooLong {
                delay,
                max: MAX_DELAY,
            });
        }
        let ms = u64::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        if ms == 0 {
            return Ok(None);
        }
        let top = 63 - ms.leading_zeros();
        let mut headers = FieldTable::default();
        for level in 0..=top {
            headers.insert(
                ShortString::from(header(level)),
                AMQPValue::Boolean(ms & (1 << level) != 0),
            );
        }
        Ok(Some(Ladder {
            exchange: level_name(settings, top),
            headers,
        }))
    }
}

/// Declares the ladder of `settings`' task queue (see the module docs) on a channel of its own
/// (without waiting for each answer; one synchronous call at the end collects a refusal).
///
/// On a RabbitMQ cluster the ladder's classic queues live on the node that first declared them.
/// While that node is down the broker answers `NOT_FOUND` for them: that is logged, not
/// returned, so that a process can still connect and run tasks that need no delay (delayed
/// publishes fail until the node is back; docs/reliability.md).
///
/// # Errors
/// [`crate::Error::Broker`] if RabbitMQ refuses the ladder otherwise (e.g. a queue of the same
/// name declared with other arguments: `PRECONDITION_FAILED`).
pub async fn declare(connection: &Connection, settings: &Settings) -> Result<()> {
    let channel = connection.create_channel().await?;
    match declare_on(&channel, settings).await {
        Ok(()) => {
            let _ = channel.close(200, "ladder declared".into()).await;
            Ok(())
        }
        Err(e) if is_not_found(&e) => {
            tracing::warn!(error = %e, "the delay ladder's queues are on a node that is down: delayed tasks cannot be published until it is back");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether RabbitMQ answered `NOT_FOUND` (what a classic queue whose node is down gives).
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

async fn declare_on(channel: &Channel, settings: &Settings) -> lapin::Result<()> {
    let exchange = ExchangeDeclareOptions {
        durable: true,
        nowait: true,
        ..Default::default()
    };
    let queue = QueueDeclareOptions {
        durable: true,
        nowait: true,
        ..Default::default()
    };
    for level in 0..LEVELS {
        let name = level_name(settings, level);
        let next = match level {
            0 => settings.exchange.clone(),
            _ => level_name(settings, level - 1),
        };
        channel
            .exchange_declare(
                name.as_str().into(),
                ExchangeKind::Headers,
                exchange,
                FieldTable::default(),
            )
            .await?;
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-message-ttl"),
            AMQPValue::LongLongInt(1i64 << level),
        );
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(next.as_str().into()),
        );
        channel
            .queue_declare(name.as_str().into(), queue, args)
            .await?;
        let when = |set: bool| {
            let mut args = FieldTable::default();
            args.insert(
                ShortString::from("x-match"),
                AMQPValue::LongString("all".into()),
            );
            args.insert(ShortString::from(header(level)), AMQPValue::Boolean(set));
            args
        };
        channel
            .queue_bind(
                name.as_str().into(),
                name.as_str().into(),
                "".into(),
                QueueBindOptions { nowait: true },
                when(true),
            )
            .await?;
        channel
            .exchange_bind(
                next.as_str().into(),
                name.as_str().into(),
                "".into(),
                ExchangeBindOptions { nowait: true },
                when(false),
            )
            .await?;
    }
    // The first call that waits for an answer: a refusal of any declaration above closed the
    // channel, and surfaces here.
    channel
        .queue_declare(
            level_name(settings, 0).as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(ladder: &Ladder) -> Vec<(String, bool)> {
        let mut bits: Vec<(String, bool)> = ladder
            .headers
            .inner()
            .iter()
            .map(|(k, v)| (k.to_string(), matches!(v, AMQPValue::Boolean(true))))
            .collect();
        bits.sort();
        bits
    }

    #[test]
    fn a_delay_is_the_sum_of_its_levels() {
        let settings = Settings::default();
        assert_eq!(Ladder::for_delay(&settings, Duration::ZERO).unwrap(), None);
        let one = Ladder::for_delay(&settings, Duration::from_millis(1))
            .unwrap()
            .unwrap();
        assert_eq!(one.exchange, "rask.tasks.delay.level0");
        assert_eq!(bits(&one), vec![("rask-delay-0".into(), true)]);
        // 1,300 ms = 1024 + 256 + 16 + 4: waits at levels 10, 8, 4 and 2, passes the others.
        let ladder = Ladder::for_delay(&settings, Duration::from_millis(1300))
            .unwrap()
            .unwrap();
        assert_eq!(ladder.exchange, "rask.tasks.delay.level10");
        let set: u64 = bits(&ladder)
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| 1 << name["rask-delay-".len()..].parse::<u32>().unwrap())
            .sum();
        assert_eq!(set, 1300);
        assert_eq!(ladder.headers.inner().len(), 11);
    }

    #[test]
    fn delays_round_up_never_down() {
        let settings = Settings::default();
        let ladder = Ladder::for_delay(&settings, Duration::from_micros(1))
            .unwrap()
            .unwrap();
        assert_eq!(bits(&ladder), vec![("rask-delay-0".into(), true)]);
        let ladder = Ladder::for_delay(&settings, Duration::from_micros(2001))
            .unwrap()
            .unwrap();
        assert_eq!(
            bits(&ladder),
            vec![("rask-delay-0".into(), true), ("rask-delay-1".into(), true)]
        );
    }

    #[test]
    fn the_longest_delay_is_bounded() {
        let settings = Settings::default();
        let top = Ladder::for_delay(&settings, MAX_DELAY).unwrap().unwrap();
        assert_eq!(top.exchange, "rask.tasks.delay.level31");
        assert_eq!(top.headers.inner().len(), 32);
        let err = Ladder::for_delay(&settings, MAX_DELAY + Duration::from_millis(1)).unwrap_err();
        assert!(matches!(err, Error::DelayTooLong { .. }), "{err}");
        assert_eq!(queue_names(&settings).len(), 32);
    }
}
