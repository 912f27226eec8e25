//! The per-task retry policy: how many attempts a task gets when its function fails with a
//! retryable error ([`crate::TaskError::retryable`]), and how long to wait before each retry.
//!
//! The wait is exponential with jitter: before retry *n* (attempt *n* + 1), a random delay in
//! `[d/2, d]` with `d = min(initial_backoff × 2^(n-1), max_backoff)`. Workers implement the wait
//! with the broker (a delay queue whose messages expire back into the task queue), never by
//! holding a message.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How to retry a task whose function fails with a retryable error. Travels in the task message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Pause before the first retry, in milliseconds (doubling for each further retry).
    pub initial_backoff_ms: u64,
    /// Longest pause between two attempts, in milliseconds.
    pub max_backoff_ms: u64,
}

impl RetryPolicy {
    /// `max_attempts` attempts in all, waiting 100 ms before the first retry, doubling up to 60 s.
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            initial_backoff_ms: 100,
            max_backoff_ms: 60_000,
        }
    }

    /// The same policy with `initial` before the first retry and at most `max` between attempts.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff_ms = duration_ms(initial);
        self.max_backoff_ms = duration_ms(max).max(self.initial_backoff_ms);
        self
    }

    /// Whether a task that has made `attempts` attempts (the failed one included) gets another.
    pub fn allows_another(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }

    /// The pause before the attempt after `attempts` attempts, with `jitter` in `[0, 1]`
    /// choosing where in `[d/2, d]` it falls.
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        let doublings = attempts.saturating_sub(1).min(63);
        let full = self
            .initial_backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_backoff_ms);
        let jitter = jitter.clamp(0.0, 1.0);
        // `full` fits in 53 bits for any sane backoff; the conversion back saturates anyway.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let ms = (full as f64 * (0.5 + jitter / 2.0)).round() as u64;
        Duration::from_millis(ms.max(1))
    }
}

/// Milliseconds in `d`, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_the_jitter_band_up_to_the_cap() {
        let p = RetryPolicy::new(10).backoff(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.delay(3, 0.5), Duration::from_millis(300));
        assert_eq!(p.delay(9, 1.0), Duration::from_secs(1));
        assert_eq!(p.delay(500, 1.0), Duration::from_secs(1));
    }

    #[test]
    fn attempts_are_bounded() {
        let p = RetryPolicy::new(3);
        assert!(p.allows_another(1) && p.allows_another(2));
        assert!(!p.allows_another(3));
        assert_eq!(RetryPolicy::new(0).max_attempts, 1);
    }
}
