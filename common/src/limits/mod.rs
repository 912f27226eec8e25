//! Global limits per function or per pool: a rate ([`Rate`], a token bucket shared by every worker) and a
//! concurrency (leases of a semaphore shared by every worker), as [`Limit`]. They live in Redis
//! ([`store`]: `rask limit set`, [`crate::Keys::limits`]) and in the `limits` setting; a limit in
//! Redis replaces the setting's for the same function. Workers keep the table in memory, so that
//! a task of a function without a limit costs no round trip; see docs/protocol.md.

pub mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// At most `count` tasks per `per` (`100/s`, `5/m`, `10/2s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Tasks per period (at least 1).
    pub count: u32,
    /// The period, in milliseconds (at least 1).
    pub per_ms: u64,
}

impl Rate {
    /// The time between two tokens, in microseconds (fractional: `3/s` is 333 333.3 µs).
    pub fn interval_us(&self) -> f64 {
        // Both are far below 2^53: exact as f64.
        #[allow(clippy::cast_precision_loss)]
        let interval = (self.per_ms as f64) * 1000.0 / f64::from(self.count);
        interval
    }
}

impl FromStr for Rate {
    type Err = Error;

    /// `COUNT/PERIOD`: the period `s`, `m`, `h` or a duration (`2s`, `500ms`).
    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: &str| Error::InvalidLimit(format!("rate {text:?}: {why}"));
        let (count, per) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("expected COUNT/PERIOD, e.g. 100/s"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| bad("the count must be a whole number"))?;
        if count == 0 {
            return Err(bad("the count must be at least 1"));
        }
        let per = match per.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => humantime::parse_duration(other)
                .map_err(|e| bad(&format!("the period: {e} (use s, m, h or a duration)")))?,
        };
        let per_ms = u64::try_from(per.as_millis()).unwrap_or(u64::MAX);
        if per_ms == 0 || per_ms > crate::delay::MAX_DELAY.as_millis() as u64 {
            return Err(bad("the period must be 1 ms to 49 days"));
        }
        Ok(Rate { count, per_ms })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per_ms {
            1000 => write!(f, "{}/s", self.count),
            60_000 => write!(f, "{}/m", self.count),
            3_600_000 => write!(f, "{}/h", self.count),
            ms => write!(
                f,
                "{}/{}",
                self.count,
                humantime::format_duration(Duration::from_millis(ms))
            ),
        }
    }
}

/// The global limits of one function: a rate, a concurrency, or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    /// Most tasks started per period, over all workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Tasks that may start at once when the bucket is full (the bucket's size); `None`: 1, so
    /// that starts are evenly spaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Most tasks running at once, over all workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

impl Limit {
    /// Checks that the limit limits something and its numbers are in range.
    ///
    /// # Errors
    /// [`Error::InvalidLimit`] saying what is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.burst.is_some() && self.rate.is_none() {
            return Err(Error::InvalidLimit("a burst needs a rate".into()));
        }
        if self.rate.is_none() && self.concurrency.is_none() {
            return Err(Error::InvalidLimit(
                "give a rate, a concurrency or both".into(),
            ));
        }
        if self.burst == Some(0) {
            return Err(Error::InvalidLimit("the burst must be at least 1".into()));
        }
        if self.concurrency == Some(0) {
            return Err(Error::InvalidLimit(
                "the concurrency must be at least 1".into(),
            ));
        }
        // A rate built by parsing is in range; one decoded from a record may not be.
        if let Some(rate) = self.rate {
            let max_ms = u64::try_from(crate::delay::MAX_DELAY.as_millis()).unwrap_or(u64::MAX);
            if rate.count == 0 || rate.per_ms == 0 || rate.per_ms > max_ms {
                return Err(Error::InvalidLimit(format!(
                    "rate {}/{} ms: the count must be at least 1 and the period 1 ms to 49 days",
                    rate.count, rate.per_ms
                )));
            }
        }
        Ok(())
    }

    /// The bucket's size: the burst, 1 when none is given.
    pub fn effective_burst(&self) -> u32 {
        self.burst.unwrap_or(1).max(1)
    }

    /// The record stored in Redis (MessagePack).
    ///
    /// # Errors
    /// [`Error::Encode`] (cannot happen).
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    /// A record read from Redis, checked as [`Limit::validate`] does: a record written by hand
    /// (a concurrency of 0, a rate of 0 per 0 ms) is refused rather than applied.
    ///
    /// # Errors
    /// [`Error::Decode`] if `bytes` are not one; [`Error::InvalidLimit`] if it is out of range.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let limit: Limit = rmp_serde::from_slice(bytes)?;
        limit.validate()?;
        Ok(limit)
    }
}

impl fmt::Display for Limit {
    /// `rate=100/s burst=10 concurrency=2` (the parts given).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(rate) = self.rate {
            parts.push(format!("rate={rate}"));
        }
        if let Some(burst) = self.burst {
            parts.push(format!("burst={burst}"));
        }
        if let Some(n) = self.concurrency {
            parts.push(format!("concurrency={n}"));
        }
        f.write_str(&parts.join(" "))
    }
}

impl FromStr for Limit {
    type Err = Error;

    /// `rate=100/s burst=10 concurrency=2`: any of the three, separated by spaces.
    fn from_str(text: &str) -> Result<Self> {
        let mut limit = Limit::default();
        for part in text.split_whitespace() {
            let bad = |why: &str| Error::InvalidLimit(format!("{part:?}: {why}"));
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| bad("expected rate=, burst= or concurrency="))?;
            let number = || {
                value
                    .parse::<u32>()
                    .map_err(|_| bad("expected a whole number"))
            };
            match name {
                "rate" => limit.rate = Some(value.parse()?),
                "burst" => limit.burst = Some(number()?),
                "concurrency" => limit.concurrency = Some(number()?),
                _ => return Err(bad("expected rate=, burst= or concurrency=")),
            }
        }
        limit.validate()?;
        Ok(limit)
    }
}

/// The longest function name a limit is set for (as a task key's function part).
pub const MAX_FUNCTION_LEN: usize = 200;

/// The start of the subjects of pool limits in the limit table: the limit of `pool:gpu` applies
/// to every task of pool `gpu`, whatever its function (and besides its function's own limit).
pub const POOL_PREFIX: &str = "pool:";

/// The subject of `pool`'s limit in the limit table (`pool:gpu`).
pub fn pool_subject(pool: &crate::Pool) -> String {
    format!("{POOL_PREFIX}{pool}")
}

/// Checks a subject given to `rask limit set`: a function name, or `pool:NAME` for a pool.
///
/// # Errors
/// [`Error::InvalidLimit`] for an empty or overlong name, or a `pool:` subject that does not
/// name a valid pool.
pub fn check_function(function: &str) -> Result<()> {
    if let Some(pool) = function.strip_prefix(POOL_PREFIX) {
        crate::Pool::new(pool).map_err(|e| Error::InvalidLimit(format!("{function:?}: {e}")))?;
    }
    if function.is_empty()
        || function.len() > MAX_FUNCTION_LEN
        || function.contains(char::is_whitespace)
    {
        return Err(Error::InvalidLimit(format!(
            "function name {function:?}: 1-{MAX_FUNCTION_LEN} characters without spaces"
        )));
    }
    Ok(())
}

/// Parses the text form of the `limits` setting (`RASK_LIMITS`): entries separated by `;`,
/// each `FUNCTION: rate=100/s burst=10 concurrency=2`.
///
/// # Errors
/// [`Error::InvalidLimit`] for an entry without `:` or a limit that does not parse.
pub fn parse_table(text: &str) -> Result<BTreeMap<String, Limit>> {
    let mut table = BTreeMap::new();
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (function, limit) = entry.split_once(':').ok_or_else(|| {
            Error::InvalidLimit(format!(
                "limits entry {entry:?}: expected FUNCTION: rate=N/s burst=N concurrency=N"
            ))
        })?;
        let function = function.trim();
        check_function(function)?;
        table.insert(function.to_owned(), limit.parse()?);
    }
    Ok(table)
}

/// Deserializes the `limits` setting from a table (`rask.toml`: `[limits.send_email]` with
/// `rate = "100/s"`, `burst = 10`, `concurrency = 2`) or from its text form ([`parse_table`]).
pub(crate) fn deserialize_setting<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<BTreeMap<String, Limit>, D::Error> {
    use serde::de::Error as _;

    #[derive(Deserialize)]
    struct Entry {
        rate: Option<String>,
        burst: Option<u32>,
        concurrency: Option<u32>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Table(BTreeMap<String, Entry>),
    }
    let parsed = match Raw::deserialize(deserializer)? {
        Raw::Text(text) => parse_table(&text),
        Raw::Table(table) => table
            .into_iter()
            .map(|(function, entry)| {
                check_function(&function)?;
                let limit = Limit {
                    rate: entry.rate.as_deref().map(str::parse).transpose()?,
                    burst: entry.burst,
                    concurrency: entry.concurrency,
                };
                limit.validate()?;
                Ok((function, limit))
            })
            .collect(),
    };
    parsed.map_err(|e: Error| D::Error::custom(e.to_string()))
}

/// Serializes the `limits` setting as tables of text (so that the `config` crate's defaults
/// layer reads back what [`deserialize_setting`] accepts).
pub(crate) fn serialize_setting<S: serde::Serializer>(
    table: &BTreeMap<String, Limit>,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;

    #[derive(Serialize)]
    struct Entry {
        #[serde(skip_serializing_if = "Option::is_none")]
        rate: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        burst: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        concurrency: Option<u32>,
    }
    let mut map = serializer.serialize_map(Some(table.len()))?;
    for (function, limit) in table {
        let entry = Entry {
            rate: limit.rate.map(|r| r.to_string()),
            burst: limit.burst,
            concurrency: limit.concurrency,
        };
        map.serialize_entry(function, &entry)?;
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_out_of_range_are_refused_when_read() {
        let forged = |limit: &Limit| Limit::decode(&rmp_serde::to_vec_named(limit).unwrap());
        let zero_rate = Limit {
            rate: Some(Rate {
                count: 0,
                per_ms: 0,
            }),
            burst: None,
            concurrency: None,
        };
        assert!(forged(&zero_rate).is_err());
        let zero_concurrency = Limit {
            rate: None,
            burst: None,
            concurrency: Some(0),
        };
        assert!(forged(&zero_concurrency).is_err());
        let fine = Limit {
            rate: Some(Rate {
                count: 5,
                per_ms: 1000,
            }),
            burst: Some(2),
            concurrency: Some(3),
        };
        assert_eq!(forged(&fine).unwrap(), fine);
    }

    #[test]
    fn rates_parse_and_print() {
        let rate: Rate = "100/s".parse().unwrap();
        assert_eq!(
            rate,
            Rate {
                count: 100,
                per_ms: 1000
            }
        );
        assert_eq!(rate.to_string(), "100/s");
        assert!((rate.interval_us() - 10_000.0).abs() < 1e-9);
        assert_eq!("5/m".parse::<Rate>().unwrap().per_ms, 60_000);
        assert_eq!("10/2s".parse::<Rate>().unwrap().to_string(), "10/2s");
        assert_eq!("1/h".parse::<Rate>().unwrap().to_string(), "1/h");
        for bad in ["", "100", "0/s", "x/s", "10/", "10/0s", "10/fortnight"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_parse_print_and_validate() {
        let limit: Limit = "rate=50/s burst=5 concurrency=2".parse().unwrap();
        assert_eq!(limit.to_string(), "rate=50/s burst=5 concurrency=2");
        assert_eq!(limit.effective_burst(), 5);
        assert_eq!(Limit::decode(&limit.encode().unwrap()).unwrap(), limit);
        let only: Limit = "concurrency=3".parse().unwrap();
        assert_eq!(only.rate, None);
        assert_eq!("rate=1/s".parse::<Limit>().unwrap().effective_burst(), 1);
        for bad in [
            "",
            "burst=2",
            "rate=1/s burst=0",
            "concurrency=0",
            "speed=3",
            "rate",
        ] {
            assert!(bad.parse::<Limit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_text_form_of_the_setting_parses() {
        let table = parse_table("send: rate=100/s burst=10; resize: concurrency=2 ;").unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table["send"].to_string(), "rate=100/s burst=10");
        assert_eq!(table["resize"].concurrency, Some(2));
        assert!(parse_table("send rate=1/s").is_err());
        assert!(parse_table(": rate=1/s").is_err());
    }
}
