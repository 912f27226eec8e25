//! How long each plain (blocking) function takes, so that quick ones run inline.
//!
//! A plain function must not hold a runtime thread for long (the thread also serves deliveries,
//! stores and acks), so it runs on the blocking pool (where a force cancel or a time limit can
//! stop waiting for it, `execute.rs`). For a body of microseconds (`inc`, a lookup) that hand-off
//! (a thread woken, a context switch) costs more than the body. So each function's run time is tracked as
//! a moving average, and a function whose average is under [`QUICK`] runs inline. A function
//! is never known quick before its first run, and one slow run lifts its average far above
//! [`QUICK`] (a run of 1 s needs dozens of quick runs to come back under it), so a function that
//! is sometimes slow soon stops running inline.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// The average run time under which a plain function runs inline.
pub(crate) const QUICK: Duration = Duration::from_micros(100);

/// The weight of the newest run in the average, as a shift: 1/8.
const NEWEST_WEIGHT_SHIFT: u32 = 3;

/// The moving average run time (ns) of each plain function that ran.
#[derive(Default)]
pub(crate) struct Pace {
    averages: RwLock<HashMap<String, AtomicU64>>,
}

impl Pace {
    /// Runs the plain body `f` of `function` on this runtime thread, catching a panic: inline
    /// when the function has been quick so far, else under `block_in_place` (which needs a
    /// multi-threaded runtime; `execute.rs` sends functions that are not quick to the blocking
    /// pool instead, so this covers one whose average rose between its check and its run);
    /// records how long it took.
    pub(crate) fn run_in_place<T>(
        &self,
        function: &str,
        f: impl FnOnce() -> T,
    ) -> std::thread::Result<T> {
        let started = Instant::now();
        let run = || std::panic::catch_unwind(AssertUnwindSafe(f));
        let caught = if self.is_quick(function) {
            run()
        } else {
            tokio::task::block_in_place(run)
        };
        self.record(function, started.elapsed());
        caught
    }

    /// Whether `function` ran before and its average run time is under [`QUICK`].
    pub(crate) fn is_quick(&self, function: &str) -> bool {
        let averages = self.averages.read().unwrap_or_else(|e| e.into_inner());
        averages
            .get(function)
            .is_some_and(|ns| ns.load(Ordering::Relaxed) < QUICK.as_nanos() as u64)
    }

    /// Every function's average run time so far (published for clients to size batches by,
    /// `batch.rs`).
    pub(crate) fn averages(&self) -> Vec<(String, Duration)> {
        let averages = self.averages.read().unwrap_or_else(|e| e.into_inner());
        averages
            .iter()
            .map(|(f, ns)| (f.clone(), Duration::from_nanos(ns.load(Ordering::Relaxed))))
            .collect()
    }

    /// Records one run of `function` that took `took`.
    pub(crate) fn record(&self, function: &str, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let fold = |average: &AtomicU64| {
            let old = average.load(Ordering::Relaxed);
            let new = old - (old >> NEWEST_WEIGHT_SHIFT) + (took >> NEWEST_WEIGHT_SHIFT);
            average.store(new, Ordering::Relaxed);
        };
        if let Some(average) = self
            .averages
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(function)
        {
            return fold(average);
        }
        let mut averages = self.averages.write().unwrap_or_else(|e| e.into_inner());
        // The first run counts in full: a slow first run is not averaged away.
        averages
            .entry(function.to_owned())
            .or_insert_with(|| AtomicU64::new(took));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_only_after_quick_runs_and_slow_runs_stay_in_memory() {
        let pace = Pace::default();
        assert!(!pace.is_quick("inc"), "unknown before its first run");
        pace.record("inc", Duration::from_micros(3));
        assert!(pace.is_quick("inc"));

        pace.record("inc", Duration::from_millis(50));
        assert!(!pace.is_quick("inc"), "one slow run lifts the average");
        let mut quick_runs = 0;
        while !pace.is_quick("inc") {
            pace.record("inc", Duration::from_micros(3));
            quick_runs += 1;
        }
        assert!(
            quick_runs > 20,
            "came back after only {quick_runs} quick runs"
        );

        pace.record("sleepy", Duration::from_millis(5));
        assert!(!pace.is_quick("sleepy"), "a slow first run counts in full");
    }
}
