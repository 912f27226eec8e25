//! Global limits from the client: [`Client::set_limit`], [`Client::limits`] and
//! [`Client::remove_limit`] write and read the table in Redis that every worker applies
//! ([`rask_common::limits`]); workers read it again within about a second.

use rask_common::limits::{store, Limit};

use crate::{Client, Result};

/// Where a limit listed by [`Client::limits`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// Set in Redis (`rask limit set`, [`Client::set_limit`]): every worker applies it.
    Redis,
    /// This client's `limits` setting: workers with the same setting apply it.
    Settings,
}

impl LimitSource {
    /// `redis` or `settings`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitSource::Redis => "redis",
            LimitSource::Settings => "settings",
        }
    }
}

/// A limit as [`Client::limits`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitInfo {
    /// The function it limits.
    pub function: String,
    /// The limit.
    pub limit: Limit,
    /// Where it comes from (a limit in Redis replaces the setting's).
    pub source: LimitSource,
}

impl Client {
    /// Limits `function` on every worker (replacing its limit in Redis, if any): at most
    /// `limit.rate` starts per period and `limit.concurrency` runs at once, over all workers.
    /// Workers apply it within about a second.
    ///
    /// # Errors
    /// [`crate::Error::Common`] ([`rask_common::Error::InvalidLimit`]) if the limit limits
    /// nothing or is out of range; a store error if Redis fails.
    pub async fn set_limit(&self, function: &str, limit: Limit) -> Result<()> {
        Ok(store::put(self.store(), function, &limit).await?)
    }

    /// Limits every task of `pool`, whatever its function (the limit of `pool:NAME` in the
    /// table; a task passes its pool's limit, then its function's).
    ///
    /// # Errors
    /// A store error if Redis fails.
    pub async fn set_pool_limit(&self, pool: &rask_common::Pool, limit: Limit) -> Result<()> {
        self.set_limit(&rask_common::limits::pool_subject(pool), limit)
            .await
    }

    /// Removes the limit of `pool` from Redis; whether it had one.
    ///
    /// # Errors
    /// A store error if Redis fails.
    pub async fn remove_pool_limit(&self, pool: &rask_common::Pool) -> Result<bool> {
        self.remove_limit(&rask_common::limits::pool_subject(pool))
            .await
    }

    /// Removes the limit of `function` from Redis; whether it had one. (A limit in workers'
    /// `limits` setting stays.)
    ///
    /// # Errors
    /// A store error if Redis fails.
    pub async fn remove_limit(&self, function: &str) -> Result<bool> {
        Ok(store::remove(self.store(), function).await?)
    }

    /// Every limit, by function: those in Redis, and those of this client's `limits` setting
    /// for functions without one in Redis.
    ///
    /// # Errors
    /// A store error if Redis fails.
    pub async fn limits(&self) -> Result<Vec<LimitInfo>> {
        let stored = store::all(self.store()).await?;
        let mut all: Vec<LimitInfo> = self
            .settings()
            .limits
            .iter()
            .filter(|(function, _)| !stored.contains_key(*function))
            .map(|(function, limit)| LimitInfo {
                function: function.clone(),
                limit: *limit,
                source: LimitSource::Settings,
            })
            .collect();
        all.extend(stored.into_iter().map(|(function, limit)| LimitInfo {
            function,
            limit,
            source: LimitSource::Redis,
        }));
        all.sort_by(|a, b| a.function.cmp(&b.function));
        Ok(all)
    }
}
