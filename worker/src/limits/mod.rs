//! Global limits at admission ([`rask_common::limits`]): the table of limits held in memory
//! ([`Limits`]), so that a task of a function without a limit pays one atomic load (none are
//! set) or one map lookup, never a round trip; and the [`gate`] a task of a limited function
//! passes before it runs.
//!
//! The table is the `limits` setting overlaid by the limits in Redis (`rask limit set`), read
//! before the worker consumes on each connection and again every [`REFRESH`] by [`refresh`],
//! so that a change reaches every worker within about a second.

mod gate;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rask_common::limits::{pool_subject, store, Limit};
use rask_common::{Pool, Settings, Store};
use tokio_util::sync::{CancellationToken, DropGuard};

pub(crate) use gate::{gate, give_back, Gate, Lease, Subject};

/// How often a worker reads the limits in Redis again.
pub(crate) const REFRESH: Duration = Duration::from_secs(1);

/// The limits this worker applies, by function (and by pool: `pool:NAME`).
pub(crate) struct Limits {
    /// The `limits` setting.
    configured: BTreeMap<String, Limit>,
    /// The setting overlaid by Redis's table.
    table: RwLock<HashMap<String, Limit>>,
    /// How many entries `table` holds: the admission check reads only this when it is 0.
    count: AtomicUsize,
}

impl Limits {
    /// The limits of `settings` (until Redis's are read).
    pub(crate) fn new(settings: &Settings) -> Self {
        let limits = Limits {
            configured: settings.limits.clone(),
            table: RwLock::default(),
            count: AtomicUsize::new(0),
        };
        limits.replace(BTreeMap::new());
        limits
    }

    /// The limit of `function`, if it has one.
    pub(crate) fn of(&self, function: &str) -> Option<Limit> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        table.get(function).copied()
    }

    /// The limit of `pool` (its subject `pool:NAME`; `None` for the default pool), and the
    /// subject, if it has one.
    pub(crate) fn of_pool(&self, pool: Option<&Pool>) -> Option<(String, Limit)> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let subject = pool_subject(&Pool::of(pool));
        let limit = self.of(&subject)?;
        Some((subject, limit))
    }

    /// Applies the setting overlaid by `stored` (Redis's table).
    fn replace(&self, stored: BTreeMap<String, Limit>) {
        let mut merged: HashMap<String, Limit> = self.configured.clone().into_iter().collect();
        merged.extend(stored);
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        self.count.store(merged.len(), Ordering::Release);
        *table = merged;
    }

    /// Reads the limits in Redis and applies them.
    ///
    /// # Errors
    /// [`rask_common::Error::Store`] if Redis fails.
    pub(crate) async fn load(&self, store: &Store) -> rask_common::Result<()> {
        self.replace(store::all(store).await?);
        Ok(())
    }
}

/// Reads the limits every [`REFRESH`] until the returned guard is dropped.
pub(crate) fn refresh(store: Store, limits: Arc<Limits>) -> DropGuard {
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(REFRESH);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = stopped.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match limits.load(&store).await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "reading the limits failed; keeping the last read");
                }
                Err(_) => {}
            }
        }
    });
    stop.drop_guard()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_limits_replace_the_settings_for_their_function() {
        let settings = Settings {
            limits: rask_common::limits::parse_table("a: rate=1/s; b: concurrency=2").unwrap(),
            ..Settings::default()
        };
        let limits = Limits::new(&settings);
        assert_eq!(limits.of("a").unwrap().to_string(), "rate=1/s");
        assert_eq!(limits.of("c"), None);
        let stored = rask_common::limits::parse_table("a: concurrency=1; c: rate=5/m").unwrap();
        limits.replace(stored);
        assert_eq!(limits.of("a").unwrap().to_string(), "concurrency=1");
        assert_eq!(limits.of("b").unwrap().to_string(), "concurrency=2");
        assert_eq!(limits.of("c").unwrap().to_string(), "rate=5/m");
        let none = Limits::new(&Settings::default());
        assert_eq!(none.count.load(Ordering::SeqCst), 0);
        assert_eq!(none.of("a"), None);
    }
}
