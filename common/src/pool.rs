//! Pools: named sets of task queues, so that different workers serve different functions (GPU
//! workers, a team's own workers). A worker serves one or more pools (setting `pools`); a task
//! goes to one pool ([`Settings::route`]).
//!
//! The default pool, [`Pool::DEFAULT`] (`default`), is exactly the queues of the settings
//! (`queue` with its shards and delay ladder, `dead_letter_exchange`, `dead_letter_queue`), as
//! before pools existed. Pool `P` has the same topology under derived names
//! ([`Settings::for_pool`]): task queue `{queue}.pool.P` (shards `{queue}.pool.P.shard{i}`, delay
//! ladder `{queue}.pool.P.delay.level{k}`), dead-letter exchange `{dead_letter_exchange}.pool.P`
//! and dead-letter queue `{dead_letter_queue}.pool.P`. A pool name is 1 to 64 characters of
//! `[A-Za-z0-9_-]`, so that derived names stay unambiguous (no `.`) and valid queue names.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::settings::Settings;

/// The longest pool name.
const MAX_POOL_NAME: usize = 64;

/// The name of a pool of workers: validated, so that the queue names derived from it are valid
/// and unambiguous. Serialized as its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pool(String);

impl Pool {
    /// The name of the default pool.
    pub const DEFAULT: &'static str = "default";

    /// The pool `name`.
    ///
    /// # Errors
    /// [`Error::Settings`] if the name is empty, longer than 64 characters, or holds a
    /// character other than `[A-Za-z0-9_-]`.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        Pool::checked(name.into()).map_err(Error::Settings)
    }

    /// The pool `name`, or why it is not one.
    fn checked(name: String) -> std::result::Result<Self, String> {
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if name.is_empty() || name.len() > MAX_POOL_NAME || !name.chars().all(ok) {
            return Err(format!(
                "pool name {name:?}: must be 1 to {MAX_POOL_NAME} characters of [A-Za-z0-9_-]"
            ));
        }
        Ok(Pool(name))
    }

    /// The default pool.
    pub fn default_pool() -> Self {
        Pool(Self::DEFAULT.to_owned())
    }

    /// Whether this is the default pool.
    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pool a message's optional `pool` field names: the default pool when absent.
    pub fn of(field: Option<&Pool>) -> Pool {
        field.cloned().unwrap_or_else(Pool::default_pool)
    }

    /// The value of a message's `pool` field for this pool: `None` for the default pool (not
    /// written, so that a message for the default pool is what it was before pools existed).
    pub fn into_field(self) -> Option<Pool> {
        (!self.is_default()).then_some(self)
    }
}

impl AsRef<str> for Pool {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::default_pool()
    }
}

/// Decoding a name checks it (the message says why it is not one).
impl TryFrom<String> for Pool {
    type Error = String;

    fn try_from(name: String) -> std::result::Result<Self, String> {
        Pool::checked(name)
    }
}

impl From<Pool> for String {
    fn from(pool: Pool) -> Self {
        pool.0
    }
}

impl std::str::FromStr for Pool {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        Pool::new(name)
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Settings {
    /// The settings of pool `pool`'s queues: these settings for the default pool; otherwise
    /// with `queue`, `dead_letter_exchange` and `dead_letter_queue` suffixed by `.pool.{pool}`
    /// (see the module docs), so that everything derived from them (shards, the delay ladder,
    /// [`crate::broker::Destination`], declarations) names the pool's queues.
    pub fn for_pool(&self, pool: &Pool) -> Settings {
        let mut settings = self.clone();
        if !pool.is_default() {
            let suffix = format!(".pool.{pool}");
            settings.queue.push_str(&suffix);
            settings.dead_letter_exchange.push_str(&suffix);
            settings.dead_letter_queue.push_str(&suffix);
        }
        settings
    }

    /// The pool a task of `function` goes to, as a message's `pool` field (`None`: the default
    /// pool): `explicit` when given (`TaskOptions::pool`, `--pool`), else the routing table's
    /// entry for `function` ([`Settings::routes`]), else the default pool.
    pub fn route(&self, function: &str, explicit: Option<&Pool>) -> Option<Pool> {
        match explicit {
            Some(pool) => pool.clone().into_field(),
            None if self.routes.is_empty() => None,
            None => self
                .routes
                .get(function)
                .and_then(|p| p.clone().into_field()),
        }
    }

    /// The pools whose queues a purge or a status report covers besides the default pool:
    /// those these settings serve (`pools`) or route to (`routes`), sorted, without the
    /// default pool.
    pub fn named_pools(&self) -> Vec<Pool> {
        let mut pools: Vec<Pool> = self
            .pools
            .iter()
            .chain(self.routes.values())
            .filter(|p| !p.is_default())
            .cloned()
            .collect();
        pools.sort();
        pools.dedup();
        pools
    }
}

/// Deserializes the routing table from a map (`rask.toml`: `[routes] image_stats = "gpu"`) or
/// from a string of `function=pool` pairs separated by commas (`RASK_ROUTES`).
pub(crate) fn routes<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<BTreeMap<String, Pool>, D::Error> {
    // Pool names are checked after the shape, so that a bad one is reported as such (an
    // untagged enum would only say that nothing matched).
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Routes {
        Table(BTreeMap<String, String>),
        Pairs(String),
    }
    let routes = match Routes::deserialize(deserializer)? {
        Routes::Table(table) => table
            .into_iter()
            .map(|(function, pool)| Ok((function, Pool::checked(pool)?)))
            .collect(),
        Routes::Pairs(pairs) => pairs_to_routes(&pairs),
    };
    routes.map_err(serde::de::Error::custom)
}

/// Parses `function=pool,function=pool` (spaces around either ignored; empty entries skipped).
///
/// # Errors
/// [`Error::Settings`] for an entry without `=`, an empty function name or a bad pool name.
pub fn parse_routes(pairs: &str) -> Result<BTreeMap<String, Pool>> {
    pairs_to_routes(pairs).map_err(Error::Settings)
}

/// [`parse_routes`], failing with the reason alone.
fn pairs_to_routes(pairs: &str) -> std::result::Result<BTreeMap<String, Pool>, String> {
    let mut table = BTreeMap::new();
    for entry in pairs.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || format!("routes entry {entry:?}: expected function=pool");
        let (function, pool) = entry.split_once('=').ok_or_else(bad)?;
        let function = function.trim();
        if function.is_empty() {
            return Err(bad());
        }
        table.insert(function.to_owned(), Pool::checked(pool.trim().to_owned())?);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for good in ["default", "gpu", "team-a_2", &"x".repeat(64)] {
            assert_eq!(Pool::new(good).unwrap().as_str(), good);
        }
        for bad in ["", "a.b", "a b", "gpu/1", "é", "a*", &"x".repeat(65)] {
            let err = Pool::new(bad).unwrap_err().to_string();
            assert!(err.contains("[A-Za-z0-9_-]"), "{bad}: {err}");
        }
        assert!(Pool::default().is_default());
        assert_eq!(
            Pool::new("gpu").unwrap().into_field().unwrap().as_str(),
            "gpu"
        );
        assert_eq!(Pool::default().into_field(), None);
        assert_eq!(Pool::of(None), Pool::default());
    }

    #[test]
    fn pool_settings_name_their_own_queues() {
        let settings = Settings {
            queue_shards: 2,
            ..Settings::default()
        };
        assert_eq!(settings.for_pool(&Pool::default()), settings);
        let gpu = settings.for_pool(&Pool::new("gpu").unwrap());
        assert_eq!(
            gpu.task_queues(),
            vec!["rask.tasks.pool.gpu", "rask.tasks.pool.gpu.shard1"]
        );
        assert_eq!(gpu.dead_letter_exchange, "rask.dead.pool.gpu");
        assert_eq!(gpu.dead_letter_queue, "rask.dead.pool.gpu");
        assert_eq!(
            crate::delay::level_name(&gpu, 3),
            "rask.tasks.pool.gpu.delay.level3"
        );
    }

    #[test]
    fn routing_prefers_the_explicit_pool_then_the_table() {
        let gpu = Pool::new("gpu").unwrap();
        let settings = Settings {
            routes: parse_routes(" image_stats = gpu , inc=default,").unwrap(),
            ..Settings::default()
        };
        assert_eq!(settings.route("image_stats", None), Some(gpu.clone()));
        assert_eq!(settings.route("inc", None), None);
        assert_eq!(settings.route("other", None), None);
        assert_eq!(settings.route("image_stats", Some(&Pool::default())), None);
        assert_eq!(settings.route("other", Some(&gpu)), Some(gpu.clone()));
        assert_eq!(settings.named_pools(), vec![gpu]);
        assert!(parse_routes("inc").is_err());
        assert!(parse_routes("=gpu").is_err());
        assert!(parse_routes("inc=g.pu").is_err());
    }
}
