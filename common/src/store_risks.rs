//! Redis settings under which stored results can vanish without a word: checked once when a
//! client or worker starts ([`Store::warn_about_risks`]), so that the operator hears of them
//! before a future waits for a result that is gone.

use std::collections::HashMap;
use std::fmt;

use crate::error::Result;
use crate::store::{Node, Store};

/// A Redis setting under which results can vanish.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreRisk {
    /// `maxmemory-policy` evicts keys with a TTL (`volatile-*`) or any key (`allkeys-*`) when
    /// memory runs short; every result has a TTL, so results are evicted silently and their
    /// futures wait until they time out.
    Eviction {
        /// The primary (`host:port`, or `Redis` for the single one).
        node: String,
        /// Its `maxmemory-policy`.
        policy: String,
    },
    /// `appendonly no`: results live in memory (and the last RDB snapshot, if any) only, so a
    /// restart of Redis loses those stored since.
    NoAppendOnly {
        /// The primary (`host:port`, or `Redis` for the single one).
        node: String,
    },
}

impl fmt::Display for StoreRisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreRisk::Eviction { node, policy } => write!(
                f,
                "{node} has maxmemory-policy {policy}: when memory runs short it evicts results \
                 (they all have a TTL) and their futures wait until they time out; \
                 set maxmemory-policy noeviction"
            ),
            StoreRisk::NoAppendOnly { node } => write!(
                f,
                "{node} has appendonly no: a restart of Redis loses the results stored since its \
                 last snapshot, and their futures wait until they time out; set appendonly yes"
            ),
        }
    }
}

/// Whether `policy` (a `maxmemory-policy`) evicts keys.
fn evicts(policy: &str) -> bool {
    policy.starts_with("volatile-") || policy.starts_with("allkeys-")
}

impl Store {
    /// The risks in the configuration of each primary of the store, read with `CONFIG GET`. A
    /// primary that refuses `CONFIG` (managed services often rename it) adds none: nothing can
    /// be said of it.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if the store cannot be reached.
    pub async fn risks(&self) -> Result<Vec<StoreRisk>> {
        let conn = self.connection();
        let mut risks = Vec::new();
        for node in conn.primaries().await? {
            let name = match &node {
                Node::Single => "Redis".to_owned(),
                Node::Cluster(host, port) => format!("{host}:{port}"),
            };
            let get = |parameter: &str| {
                let mut cmd = redis::cmd("CONFIG");
                cmd.arg("GET").arg(parameter);
                cmd
            };
            let config = async {
                let policy: HashMap<String, String> =
                    conn.query_on(&node, get("maxmemory-policy")).await?;
                let appendonly: HashMap<String, String> =
                    conn.query_on(&node, get("appendonly")).await?;
                Ok::<_, crate::Error>((policy, appendonly))
            };
            let (policy, appendonly) = match config.await {
                Ok(config) => config,
                Err(crate::Error::Store(e)) if e.kind() != redis::ErrorKind::Io => {
                    tracing::debug!(node = %name, error = %e, "cannot read Redis's configuration");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(policy) = policy.get("maxmemory-policy").filter(|p| evicts(p)) {
                risks.push(StoreRisk::Eviction {
                    node: name.clone(),
                    policy: policy.clone(),
                });
            }
            if appendonly.get("appendonly").is_some_and(|a| a == "no") {
                risks.push(StoreRisk::NoAppendOnly { node: name });
            }
        }
        Ok(risks)
    }

    /// Logs each of [`Store::risks`] as a warning; call it once, at start. A failure to read
    /// them is only logged: it is no reason not to start.
    pub async fn warn_about_risks(&self) {
        match self.risks().await {
            Ok(risks) => {
                for risk in risks {
                    tracing::warn!("{risk}");
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot check Redis's configuration"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_policies_that_evict_are_risks() {
        for policy in [
            "volatile-lru",
            "volatile-ttl",
            "allkeys-lru",
            "allkeys-random",
        ] {
            assert!(evicts(policy), "{policy}");
        }
        assert!(!evicts("noeviction"));
    }
}
