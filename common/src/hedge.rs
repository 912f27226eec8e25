//! Hedged execution: when a task is late, a second copy of its message is published; the first
//! outcome stored wins (results are write-once) and the other copy is revoked, so a worker running
//! it stops and a worker receiving it later drops it (see docs/protocol.md, "Hedged execution").
//!
//! This module owns the policy ([`Hedge`], set with [`crate::TaskOptions::hedge`] or
//! [`crate::TaskOptions::hedge_p95`]) and the deployment's count of hedge copies,
//! [`crate::Keys::hedges`] (`{prefix}:hedges`, a hash: function -> copies published), which shows
//! what hedging costs in extra runs. The client that submitted the tasks does the hedging
//! (`producer/src/hedge.rs`): nothing on workers changes.

use std::time::Duration;

use redis::AsyncCommands;

use crate::error::Result;
use crate::store::Store;

/// When a task is late enough to publish a second copy of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hedge {
    /// When it has been running longer than this.
    After(Duration),
    /// When it has been running longer than `factor` times the 95th percentile of the
    /// completion times of the tasks of the same call seen so far (once [`P95_SAMPLES`] have
    /// completed; before that, `factor` times the function's average run time that workers
    /// publish to `{prefix}:pace`, if they published one).
    P95 {
        /// The multiple of the 95th percentile (at least 1).
        factor: f64,
    },
}

/// Completed tasks of a call needed before [`Hedge::P95`] trusts their 95th percentile.
pub const P95_SAMPLES: usize = 20;

/// The shortest wait [`Hedge::P95`] ever gives: a task of a few microseconds is not hedged after
/// a few microseconds more (the copy would cost more than the wait).
pub const P95_FLOOR: Duration = Duration::from_millis(10);

impl Hedge {
    /// The wait after which a task is hedged, given the 95th percentile `p95` of its call's
    /// completion times (`None`: not enough samples yet) and the function's published average
    /// run time `pace`. `None`: not known yet (do not hedge for now), or a wait too long to
    /// represent (an infinite or huge factor: never hedge).
    pub fn threshold(&self, p95: Option<Duration>, pace: Option<Duration>) -> Option<Duration> {
        match *self {
            Hedge::After(after) => Some(after),
            Hedge::P95 { factor } => {
                let base = p95.or(pace)?;
                // Under 1 (or NaN) counts as 1; `Duration::mul_f64` would panic on overflow.
                let factor = if factor >= 1.0 { factor } else { 1.0 };
                Duration::try_from_secs_f64(base.as_secs_f64() * factor)
                    .ok()
                    .map(|wait| wait.max(P95_FLOOR))
            }
        }
    }
}

/// Counts `copies` hedge copies of `function` in [`crate::Keys::hedges`] (one `HINCRBY`).
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn count_copies(store: &Store, function: &str, copies: u64) -> Result<()> {
    if copies == 0 {
        return Ok(());
    }
    let mut conn = store.connection();
    let _: i64 = conn.hincr(store.keys().hedges(), function, copies).await?;
    Ok(())
}

/// The hedge copies of `function` published so far in this deployment (one `HGET`; 0 if none).
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn copies(store: &Store, function: &str) -> Result<u64> {
    let mut conn = store.connection();
    let n: Option<u64> = conn.hget(store.keys().hedges(), function).await?;
    Ok(n.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_wait_is_its_own_threshold() {
        let hedge = Hedge::After(Duration::from_millis(300));
        assert_eq!(
            hedge.threshold(None, None),
            Some(Duration::from_millis(300))
        );
        assert_eq!(
            hedge.threshold(Some(Duration::from_secs(9)), None),
            Some(Duration::from_millis(300))
        );
    }

    #[test]
    fn hostile_factors_never_panic() {
        let base = Some(Duration::from_millis(50));
        let nan = Hedge::P95 { factor: f64::NAN };
        assert_eq!(nan.threshold(base, None), Some(Duration::from_millis(50)));
        let negative = Hedge::P95 { factor: -3.0 };
        assert_eq!(
            negative.threshold(base, None),
            Some(Duration::from_millis(50))
        );
        for factor in [f64::INFINITY, 1e300] {
            let huge = Hedge::P95 { factor };
            assert_eq!(huge.threshold(base, None), None, "{factor}: never hedged");
        }
        let zero_base = Hedge::P95 {
            factor: f64::INFINITY,
        };
        assert_eq!(zero_base.threshold(Some(Duration::ZERO), None), None);
    }

    #[test]
    fn p95_uses_the_samples_then_the_pace_and_never_goes_under_the_floor() {
        let hedge = Hedge::P95 { factor: 2.0 };
        assert_eq!(hedge.threshold(None, None), None, "nothing known yet");
        assert_eq!(
            hedge.threshold(None, Some(Duration::from_millis(40))),
            Some(Duration::from_millis(80))
        );
        assert_eq!(
            hedge.threshold(
                Some(Duration::from_millis(100)),
                Some(Duration::from_millis(40))
            ),
            Some(Duration::from_millis(200)),
            "the call's own percentile wins over the average"
        );
        assert_eq!(
            hedge.threshold(Some(Duration::from_micros(3)), None),
            Some(P95_FLOOR)
        );
        let under_one = Hedge::P95 { factor: 0.5 };
        assert_eq!(
            under_one.threshold(Some(Duration::from_millis(100)), None),
            Some(Duration::from_millis(100)),
            "a factor under 1 counts as 1"
        );
    }
}
