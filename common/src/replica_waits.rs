//! The bookkeeping of waits for replicas (`redis_wait_replicas`): when a wait falls short (a
//! replica is down, or a promoted primary has none yet), writes go on without waiting for
//! [`PAUSE`], so that a degraded store is not slowed by a timed-out wait per batch. Those
//! writes are acknowledged with fewer copies than asked for, so they are never silent: each
//! short wait and each skipped one is counted ([`ReplicaWaitCounts`], a worker's `/metrics`),
//! a short wait is logged as a warning, and so is the number of writes a pause let through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long writes go on without waiting for replicas after a wait fell short.
pub(crate) const PAUSE: Duration = Duration::from_secs(5);

/// Counts of waits for replicas that did not happen as asked, since the counts were made;
/// share one across stores (e.g. a worker's reconnections) with
/// [`crate::Store::with_replica_wait_counts`].
#[derive(Debug, Default)]
pub struct ReplicaWaitCounts {
    short: AtomicU64,
    skipped: AtomicU64,
}

impl ReplicaWaitCounts {
    /// Waits that reached fewer replicas than `redis_wait_replicas` in time.
    pub fn short(&self) -> u64 {
        self.short.load(Ordering::Relaxed)
    }

    /// Writes acknowledged without a wait, in the pauses after short waits.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// Whether to wait, and what came of waits; shared by the clones of one store.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaWaits {
    wanted: u32,
    counts: Arc<ReplicaWaitCounts>,
    pause: Arc<Mutex<Pause>>,
}

/// The pause after a short wait.
#[derive(Debug, Default)]
struct Pause {
    /// Until when waits are skipped.
    until: Option<Instant>,
    /// Waits skipped in this pause (logged when it ends).
    skipped: u64,
}

impl ReplicaWaits {
    /// Bookkeeping for waits for `wanted` replicas.
    pub(crate) fn new(wanted: u32) -> Self {
        ReplicaWaits {
            wanted,
            counts: Arc::default(),
            pause: Arc::default(),
        }
    }

    /// The same, counting into `counts`.
    pub(crate) fn counting_into(self, counts: Arc<ReplicaWaitCounts>) -> Self {
        ReplicaWaits { counts, ..self }
    }

    /// The replicas to wait for, or `None` when not to wait now (nothing asked for, or a pause:
    /// then the skipped wait is counted).
    pub(crate) fn to_wait(&self) -> Option<u32> {
        self.to_wait_at(Instant::now())
    }

    /// [`ReplicaWaits::to_wait`] at `now`.
    fn to_wait_at(&self, now: Instant) -> Option<u32> {
        if self.wanted == 0 {
            return None;
        }
        let mut pause = self.pause.lock().unwrap_or_else(PoisonError::into_inner);
        match pause.until {
            Some(until) if now < until => {
                pause.skipped += 1;
                self.counts.skipped.fetch_add(1, Ordering::Relaxed);
                None
            }
            Some(_) => {
                if pause.skipped > 0 {
                    tracing::warn!(
                        skipped = pause.skipped,
                        wanted = self.wanted,
                        "{} writes were acknowledged without waiting for replicas in the last \
                         {PAUSE:?}; waiting for replicas again",
                        pause.skipped
                    );
                }
                *pause = Pause::default();
                Some(self.wanted)
            }
            None => Some(self.wanted),
        }
    }

    /// Records that a wait reached `reached` replicas: short of the wanted number, it is
    /// counted, logged, and waits pause for [`PAUSE`].
    pub(crate) fn reached(&self, reached: u64) {
        self.reached_at(reached, Instant::now());
    }

    /// [`ReplicaWaits::reached`] at `now`.
    fn reached_at(&self, reached: u64, now: Instant) {
        if reached >= u64::from(self.wanted) {
            return;
        }
        self.counts.short.fetch_add(1, Ordering::Relaxed);
        self.pause
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .until = Some(now + PAUSE);
        tracing::warn!(
            reached,
            wanted = self.wanted,
            "writes reached fewer replicas than redis_wait_replicas in time; acknowledging \
             without waiting for replicas for {PAUSE:?}"
        );
    }

    /// The counts.
    pub(crate) fn counts(&self) -> &Arc<ReplicaWaitCounts> {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_asked_means_no_wait() {
        assert_eq!(ReplicaWaits::new(0).to_wait(), None);
    }

    #[test]
    fn a_short_wait_pauses_waits_and_every_skip_is_counted() {
        let waits = ReplicaWaits::new(1);
        let start = Instant::now();
        assert_eq!(waits.to_wait_at(start), Some(1));
        waits.reached_at(1, start);
        assert_eq!(
            waits.to_wait_at(start),
            Some(1),
            "a full wait pauses nothing"
        );
        waits.reached_at(0, start);
        assert_eq!(waits.counts().short(), 1);
        assert_eq!(waits.to_wait_at(start), None);
        let later = start + PAUSE / 2;
        assert_eq!(
            waits.clone().to_wait_at(later),
            None,
            "clones share the pause"
        );
        assert_eq!(waits.counts().skipped(), 2);
        assert_eq!(
            waits.to_wait_at(start + PAUSE),
            Some(1),
            "waits resume after the pause"
        );
        assert_eq!(waits.counts().skipped(), 2);
    }
}
