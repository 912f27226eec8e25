//! The largest result a worker stores: `max_result_bytes`, or less when Redis accepts less.
//!
//! Redis refuses a value over its `proto-max-bulk-len` (512 MB by default) by closing the
//! connection, which a client cannot tell from a network failure: retried, such a value would
//! hold its batch forever. So at each connection the worker reads `proto-max-bulk-len`
//! (`CONFIG GET`, where the server allows it) and keeps results 1 KiB below it (room for the
//! outcome's envelope). A larger result is not stored: a `ResultTooLarge` failure naming the
//! task and both sizes is stored in its place.

use rask_common::{FailureKind, Outcome, Settings, Store, TaskFailure, TaskMessage};

/// Room for the envelope of an outcome around its value.
const ENVELOPE: usize = 1024;

/// The largest result stored, and which limit sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResultLimit {
    bytes: usize,
    /// The setting or server limit that sets `bytes`, with its value, for failures.
    because: String,
}

impl ResultLimit {
    /// `max_result_bytes` of `settings`, or Redis's `proto-max-bulk-len` less 1 KiB if that is
    /// lower (`redis_limit`, `None` where `CONFIG GET` is not allowed).
    fn new(settings: &Settings, redis_limit: Option<usize>) -> Self {
        let max = settings.max_result_bytes;
        match redis_limit {
            Some(limit) if limit.saturating_sub(ENVELOPE) < max => ResultLimit {
                bytes: limit.saturating_sub(ENVELOPE),
                because: format!("Redis's proto-max-bulk-len = {limit} (less {ENVELOPE} bytes)"),
            },
            _ => ResultLimit {
                bytes: max,
                because: format!("max_result_bytes = {max}"),
            },
        }
    }

    /// The limit for results stored in `store` with `settings` (see the module docs).
    pub(crate) async fn read(store: &Store, settings: &Settings) -> Self {
        let mut config = redis::cmd("CONFIG");
        config.arg("GET").arg("proto-max-bulk-len");
        let answer: redis::RedisResult<Vec<String>> =
            config.query_async(&mut store.connection()).await;
        let limit = match &answer {
            Ok(pair) => pair.get(1).and_then(|value| value.parse().ok()),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read Redis's proto-max-bulk-len; results are bounded by max_result_bytes only");
                None
            }
        };
        let limit = ResultLimit::new(settings, limit);
        if limit.bytes < settings.max_result_bytes {
            tracing::warn!(bytes = limit.bytes, because = %limit.because, "results are bounded below max_result_bytes");
        }
        limit
    }

    /// `outcome`, unless its value is over the limit: then a `ResultTooLarge` failure of
    /// `message` reported by `worker`, naming the task and both sizes.
    pub(crate) fn apply(&self, outcome: Outcome, message: &TaskMessage, worker: &str) -> Outcome {
        match outcome {
            Outcome::Value(value) if value.len() > self.bytes => {
                let text = format!(
                    "task {} (key {}) returned a result of {} bytes, over {}",
                    message.function,
                    message.key,
                    value.len(),
                    self.because
                );
                let kind = FailureKind::ResultTooLarge;
                Outcome::Failure(TaskFailure::of(message, kind, text, worker))
            }
            outcome => outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rask_common::TaskKey;

    #[test]
    fn values_over_the_lower_limit_become_failures() {
        let settings = Settings {
            max_result_bytes: 4096,
            ..Settings::default()
        };
        let message = TaskMessage::new(TaskKey::new("echo-1").unwrap(), "echo", Vec::new());
        let limit = ResultLimit::new(&settings, None);
        let fits = Outcome::Value(vec![0; 4096]);
        assert_eq!(limit.apply(fits.clone(), &message, "w"), fits);
        let Outcome::Failure(f) = limit.apply(Outcome::Value(vec![0; 4097]), &message, "w") else {
            panic!("a failure");
        };
        assert_eq!(f.kind, FailureKind::ResultTooLarge);
        assert_eq!(
            f.message,
            "task echo (key echo-1) returned a result of 4097 bytes, over max_result_bytes = 4096"
        );

        // Redis accepts more: the setting holds. Redis accepts less: its limit does.
        assert_eq!(ResultLimit::new(&settings, Some(1 << 20)), limit);
        let redis = ResultLimit::new(&settings, Some(3000));
        assert_eq!(redis.bytes, 3000 - ENVELOPE);
        let Outcome::Failure(f) = redis.apply(Outcome::Value(vec![0; 2000]), &message, "w") else {
            panic!("a failure");
        };
        assert!(f
            .message
            .ends_with("over Redis's proto-max-bulk-len = 3000 (less 1024 bytes)"));
    }
}
