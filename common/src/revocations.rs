//! Revocations: the tasks a client cancelled with `force`, which workers must not run (or must
//! stop), kept in Redis for the result TTL so that workers starting later honour them too.
//!
//! They live in one sorted set, [`crate::Keys::revoked`] (`{prefix}:revoked`): member the task key,
//! score the time (Unix milliseconds) at which the revocation expires, `now + result_ttl` when it
//! was made (after that the task's `Cancelled` outcome has expired too). Each batch is announced
//! on [`crate::Keys::revoked_channel`] as a [`Revoked`] (MessagePack), so that live workers learn of it
//! at once; a worker reads the whole set when it starts, when it connects again, and every few
//! `redis_ping_interval`s (missed announcements cost time, never a run).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::keys::TaskKey;
use crate::store::Store;

/// Most keys revoked by one `ZADD` and announced by one `PUBLISH`.
const REVOKE_CHUNK: usize = 1000;

/// One announced batch of revocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// When the revocations expire, in Unix milliseconds.
    pub expires_ms: u64,
    /// The revoked tasks.
    pub keys: Vec<TaskKey>,
}

impl Revoked {
    /// The batch as announced (MessagePack).
    ///
    /// # Errors
    /// [`crate::Error::Encode`] if it does not encode (it always does).
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(rmp_serde::to_vec(self)?)
    }

    /// A batch read from an announcement.
    ///
    /// # Errors
    /// [`crate::Error::Decode`] if `bytes` are not one.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        Ok(rmp_serde::from_slice(bytes)?)
    }
}

/// Milliseconds since the Unix epoch of `at` (0 before it).
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The revocations of a deployment's sorted set as read by [`Store::revocations`].
pub type Revocations = Vec<(TaskKey, u64)>;

impl Store {
    /// Revokes `keys` for the result TTL: adds them to [`crate::Keys::revoked`] (dropping the
    /// revocations that expired, and setting the set's own TTL to the newest expiry) and
    /// announces them on [`crate::Keys::revoked_channel`] (a batch per 1,000 keys), in one
    /// round trip.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn revoke(&self, keys: &[TaskKey]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let now = unix_ms(SystemTime::now());
        let expires_ms = now.saturating_add(self.ttl_ms());
        let names = self.keys();
        let set = names.revoked();
        let mut pipe = redis::pipe();
        // In chunks, so that no command or announcement is huge.
        for chunk in keys.chunks(REVOKE_CHUNK) {
            let zadd = pipe.cmd("ZADD").arg(&set);
            for key in chunk {
                zadd.arg(expires_ms).arg(key.as_str());
            }
            zadd.ignore();
            let batch = Revoked {
                expires_ms,
                keys: chunk.to_vec(),
            };
            pipe.cmd("PUBLISH")
                .arg(names.revoked_channel())
                .arg(batch.encode()?)
                .ignore();
        }
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&set)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&set)
            .arg(self.ttl_ms())
            .ignore();
        let () = pipe.query_async(&mut self.connection()).await?;
        Ok(())
    }

    /// The revocations in force now, with their expiry (Unix milliseconds).
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn revocations(&self) -> Result<Revocations> {
        let now = unix_ms(SystemTime::now());
        let found: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys().revoked())
            .arg(format!("({now}"))
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut self.connection())
            .await?;
        // Members are written only by `revoke`; one that is not a key is skipped.
        Ok(found
            .into_iter()
            .filter_map(|(key, expires)| TaskKey::new(key).ok().map(|k| (k, expires)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;

    #[test]
    fn batches_round_trip() {
        let batch = Revoked {
            expires_ms: 42,
            keys: vec![
                TaskKey::new("inc-1").unwrap(),
                TaskKey::new("inc-2").unwrap(),
            ],
        };
        assert_eq!(Revoked::decode(&batch.encode().unwrap()).unwrap(), batch);
        assert!(Revoked::decode(b"\xc1").is_err());
    }

    #[test]
    fn names() {
        let keys = Keys::new("p");
        assert_eq!(keys.revoked(), "p:revoked");
        assert_eq!(keys.revoked_channel(), "p:revocations");
        assert_eq!(Keys::clustered("p").revoked(), "{p}:revoked");
    }
}
