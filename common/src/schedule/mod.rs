//! Periodic tasks: what a schedule is ([`Schedule`]: a name, when it ticks, what a tick
//! publishes), when it ticks ([`Timing`]: a cron pattern in a time zone, or a fixed interval), and
//! which ticks are due ([`Schedule::due`], by the [`Missed`] policy). Schedules live in Redis
//! ([`store`]); every worker checks them and the first to claim a tick publishes it, so there is
//! no scheduler process to lose.

pub mod store;

use std::str::FromStr;
use std::time::Duration;

use croner::Cron;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{TaskKey, MAX_KEY_LEN};
use crate::message::TaskMessage;

/// The longest schedule name.
pub const MAX_NAME_LEN: usize = 64;

/// The most ticks one check publishes for one schedule (policy [`Missed::All`] after a long
/// outage): the rest follow at the next checks.
pub const MAX_TICKS_PER_CHECK: usize = 1000;

/// When a schedule ticks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Timing {
    /// At the times a cron pattern names (5 fields, `minute hour day month weekday`, or 6 with
    /// seconds first), read in the IANA time zone `tz` (`UTC` by default). Daylight saving time
    /// as Vixie cron: a time the clocks skip runs right after the jump; a fixed time the clocks
    /// repeat runs once; patterns that tick every few minutes keep ticking through both.
    Cron {
        /// The pattern, e.g. `*/5 * * * *`.
        pattern: String,
        /// The time zone, e.g. `Europe/Paris`.
        tz: String,
    },
    /// Every `every_ms` milliseconds from `anchor_ms` (Unix time, ms): the ticks are
    /// `anchor + k × every`.
    Every {
        /// The interval, in ms (at least 1).
        every_ms: u64,
        /// The first tick, in Unix ms.
        anchor_ms: u64,
    },
}

impl Timing {
    /// A cron timing, checked: the pattern parses and the time zone is known.
    ///
    /// # Errors
    /// [`Error::InvalidSchedule`] saying what is wrong.
    pub fn cron(pattern: &str, tz: Option<&str>) -> Result<Self> {
        let timing = Timing::Cron {
            pattern: pattern.trim().to_owned(),
            tz: tz.unwrap_or("UTC").to_owned(),
        };
        timing.compiled()?;
        Ok(timing)
    }

    /// A fixed interval, its first tick one interval from `now_ms`.
    ///
    /// # Errors
    /// [`Error::InvalidSchedule`] if `every` is under 1 ms.
    pub fn every(every: Duration, now_ms: u64) -> Result<Self> {
        let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        if every_ms == 0 {
            return Err(Error::InvalidSchedule(
                "the interval must be at least 1 ms".into(),
            ));
        }
        Ok(Timing::Every {
            every_ms,
            anchor_ms: now_ms.saturating_add(every_ms),
        })
    }

    /// The timing as a person would write it: `cron */5 * * * * (Europe/Paris)`, `every 30s`.
    pub fn describe(&self) -> String {
        match self {
            Timing::Cron { pattern, tz } => format!("cron {pattern} ({tz})"),
            Timing::Every { every_ms, .. } => format!(
                "every {}",
                humantime::format_duration(Duration::from_millis(*every_ms))
            ),
        }
    }

    fn compiled(&self) -> Result<Compiled> {
        match self {
            Timing::Cron { pattern, tz } => {
                let cron = Cron::from_str(pattern).map_err(|e| {
                    Error::InvalidSchedule(format!("cron pattern {pattern:?}: {e}"))
                })?;
                let zone = TimeZone::get(tz)
                    .map_err(|e| Error::InvalidSchedule(format!("time zone {tz:?}: {e}")))?;
                Ok(Compiled::Cron(Box::new(cron), zone))
            }
            // A record written by hand may hold what `Timing::every` refuses.
            Timing::Every { every_ms: 0, .. } => Err(Error::InvalidSchedule(
                "the interval must be at least 1 ms".into(),
            )),
            Timing::Every {
                every_ms,
                anchor_ms,
            } => Ok(Compiled::Every(*every_ms, *anchor_ms)),
        }
    }

    /// The first tick strictly after `after_ms` (Unix ms), if there is one.
    ///
    /// # Errors
    /// [`Error::InvalidSchedule`] if the timing does not compile (a record from a newer rask).
    pub fn next_after(&self, after_ms: u64) -> Result<Option<u64>> {
        self.compiled().map(|c| c.next_after(after_ms))
    }

    /// The ticks in `(after_ms, until_ms]`, at most `limit` of them, oldest first.
    ///
    /// # Errors
    /// As [`Timing::next_after`].
    pub fn ticks_between(&self, after_ms: u64, until_ms: u64, limit: usize) -> Result<Vec<u64>> {
        Ok(self.compiled()?.ticks_between(after_ms, until_ms, limit))
    }
}

/// A timing ready to compute ticks.
enum Compiled {
    Cron(Box<Cron>, TimeZone),
    Every(u64, u64),
}

impl Compiled {
    fn ticks_between(&self, after_ms: u64, until_ms: u64, limit: usize) -> Vec<u64> {
        let mut ticks = Vec::new();
        let mut from = after_ms;
        while ticks.len() < limit {
            match self.next_after(from) {
                Some(tick) if tick <= until_ms => {
                    ticks.push(tick);
                    from = tick;
                }
                _ => break,
            }
        }
        ticks
    }

    /// The latest tick at or before `at_ms`, if any.
    fn latest_at_or_before(&self, at_ms: u64) -> Option<u64> {
        match self {
            Compiled::Every(every, anchor) => {
                let k = at_ms.checked_sub(*anchor)? / every;
                Some(anchor + k * every)
            }
            Compiled::Cron(cron, zone) => {
                // croner works in whole seconds: the second of `at_ms`, inclusive.
                let at =
                    Timestamp::from_millisecond(i64::try_from(at_ms - at_ms % 1000).ok()?).ok()?;
                let previous = cron
                    .find_previous_occurrence(&at.to_zoned(zone.clone()), true)
                    .ok()?;
                u64::try_from(previous.timestamp().as_millisecond()).ok()
            }
        }
    }

    fn next_after(&self, after_ms: u64) -> Option<u64> {
        match self {
            Compiled::Every(every, anchor) => {
                if after_ms < *anchor {
                    return Some(*anchor);
                }
                let k = (after_ms - anchor) / every + 1;
                k.checked_mul(*every)?.checked_add(*anchor)
            }
            Compiled::Cron(cron, zone) => {
                let after = Timestamp::from_millisecond(i64::try_from(after_ms).ok()?).ok()?;
                // croner works in whole seconds: start from the second after `after`.
                let zoned = after.to_zoned(zone.clone());
                let next = cron.find_next_occurrence(&zoned, false).ok()?;
                let ms = u64::try_from(next.timestamp().as_millisecond()).ok()?;
                if ms > after_ms {
                    Some(ms)
                } else {
                    // `after` fell inside the second of a tick: ask again from that second.
                    let next = cron.find_next_occurrence(&next, false).ok()?;
                    u64::try_from(next.timestamp().as_millisecond()).ok()
                }
            }
        }
    }
}

/// What to do with ticks that came while no worker checked (all workers down, say): ticks
/// older than [`Schedule::due`]'s tolerance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missed {
    /// Publish none of them.
    Skip,
    /// Publish the latest of them, once (the default).
    #[default]
    Once,
    /// Publish every one of them ([`MAX_TICKS_PER_CHECK`] per check).
    All,
}

impl FromStr for Missed {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "skip" => Ok(Missed::Skip),
            "once" => Ok(Missed::Once),
            "all" => Ok(Missed::All),
            other => Err(Error::InvalidSchedule(format!(
                "missed-tick policy {other:?}: expected skip, once or all"
            ))),
        }
    }
}

impl std::fmt::Display for Missed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Missed::Skip => "skip",
            Missed::Once => "once",
            Missed::All => "all",
        })
    }
}

/// A periodic task, as stored in Redis (MessagePack, field names included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Its name: 1-64 characters of `[A-Za-z0-9_.-]`, unique in the deployment.
    pub name: String,
    /// When it ticks.
    pub timing: Timing,
    /// What to do with missed ticks.
    #[serde(default)]
    pub missed: Missed,
    /// Paused schedules do not tick (their ticks while paused count as skipped).
    #[serde(default)]
    pub paused: bool,
    /// The message every tick publishes, with its key replaced by [`Schedule::tick_key`]:
    /// function, arguments and options (priority, retries, time limit, ...).
    pub template: TaskMessage,
    /// When it was added (Unix ms): ticks before it are not due.
    pub created_ms: u64,
}

impl Schedule {
    /// Checks a schedule name.
    ///
    /// # Errors
    /// [`Error::InvalidSchedule`] if it is empty, longer than [`MAX_NAME_LEN`] or holds other
    /// characters than `[A-Za-z0-9_.-]`.
    pub fn check_name(name: &str) -> Result<()> {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if valid {
            Ok(())
        } else {
            Err(Error::InvalidSchedule(format!(
                "name {name:?}: names are 1-{MAX_NAME_LEN} characters of [A-Za-z0-9_.-]"
            )))
        }
    }

    /// The key of the task that the tick at `tick_ms` publishes: `{function}-{name}-{tick_ms}`
    /// (the function shortened to fit), the same for every worker, so that a tick's result has
    /// one place and a tick published twice would still be stored once.
    pub fn tick_key(&self, tick_ms: u64) -> TaskKey {
        let suffix = format!("-{}-{tick_ms}", self.name);
        let room = MAX_KEY_LEN.saturating_sub(suffix.len());
        let mut key: String = self
            .template
            .function
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "_.:-".contains(*c))
            .take(room)
            .collect();
        key.push_str(&suffix);
        TaskKey::new(key).expect("names and functions are filtered to the key alphabet")
    }

    /// The message of the tick at `tick_ms`.
    pub fn tick_message(&self, tick_ms: u64) -> TaskMessage {
        let mut message = self.template.clone();
        message.key = self.tick_key(tick_ms);
        message.attempt = 0;
        message
    }

    /// The ticks to publish at `now_ms`, given the last tick claimed (`last_ms`, none yet if
    /// `None`): every tick in `(last, now]` no older than `tolerance` is due; of the older
    /// (missed) ones, none, the latest or all, by [`Schedule::missed`]. Also returns the tick to
    /// record as the last one (the latest in `(last, now]` handled), or `None` when nothing
    /// ticked. A paused schedule's ticks are recorded, not published.
    ///
    /// # Errors
    /// [`Error::InvalidSchedule`] if the timing does not compile.
    pub fn due(
        &self,
        last_ms: Option<u64>,
        now_ms: u64,
        tolerance: Duration,
    ) -> Result<(Vec<u64>, Option<u64>)> {
        let compiled = self.timing.compiled()?;
        let after = last_ms.unwrap_or(self.created_ms).max(self.created_ms);
        let tolerance_ms = u64::try_from(tolerance.as_millis()).unwrap_or(u64::MAX);
        // Ticks at or after `recent_from` are recent; those before it, missed.
        let recent_from = now_ms.saturating_sub(tolerance_ms).max(after + 1);
        let missed_latest = compiled
            .latest_at_or_before(recent_from - 1)
            .filter(|t| *t > after);
        let recent = compiled.ticks_between(recent_from - 1, now_ms, MAX_TICKS_PER_CHECK);
        let mut due = match (self.missed, missed_latest) {
            (_, None) | (Missed::Skip, _) => Vec::new(),
            (Missed::Once, Some(tick)) => vec![tick],
            (Missed::All, Some(_)) => {
                let missed = compiled.ticks_between(after, recent_from - 1, MAX_TICKS_PER_CHECK);
                if missed.len() == MAX_TICKS_PER_CHECK {
                    // The rest at the next checks, in order.
                    let latest = missed.last().copied();
                    return Ok((if self.paused { Vec::new() } else { missed }, latest));
                }
                missed
            }
        };
        let latest = recent.last().copied().or(missed_latest);
        if self.paused {
            return Ok((Vec::new(), latest));
        }
        due.extend(recent);
        Ok((due, latest))
    }

    /// The record's bytes.
    ///
    /// # Errors
    /// [`Error::Encode`] (cannot happen for a well-formed record).
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    /// A record from its bytes.
    ///
    /// # Errors
    /// [`Error::Decode`] if they are not a schedule.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        Ok(rmp_serde::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests;
