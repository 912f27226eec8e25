//! Plain (blocking) functions under a time limit or a force cancel, and the threads they leave
//! behind.
//!
//! A thread cannot be stopped from outside: at its limit (or `cancel_grace` after its task was
//! cancelled with `force`), the worker stops waiting for a plain function and fails its task (or
//! broadcast), but the thread runs on until the function returns. [`Overruns`] counts those threads
//! (the `rask_overrun_threads` gauge, and a log line each time one starts or ends) and bounds them:
//! when their number reaches `max_overrun_threads` (default: 2 × `concurrency`),
//! [`Overruns::exhausted`] fires, and the worker stops as on SIGTERM and exits with
//! [`crate::Error::Overruns`], so that its supervisor starts a fresh process (the only way to end
//! such threads). Without the bound, a function that hangs for some inputs would pile up threads
//! (each with its stack, and its CPU if it spins) until the worker starved, and then the blocking
//! pool's 512 threads, after which every plain function would wait for a free thread.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

/// The state of one run: running, overrun (the caller stopped waiting), or ended.
const RUNNING: u8 = 0;
const OVERRUN: u8 = 1;
const ENDED: u8 = 2;

/// The threads of one worker process still running past their time limit (see the module docs).
#[derive(Debug)]
pub(crate) struct Overruns {
    running: AtomicUsize,
    max: usize,
    gauge: Gauge,
    exhausted: CancellationToken,
}

/// A plain function ran past its limit (or its cancellation's grace); its thread runs on,
/// counted by [`Overruns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overran;

/// How a run can be stopped by a force cancel (`client.cancel(..).force()`): its token, which
/// the worker cancels when the task is revoked, and how long a plain function then has to
/// return before the worker stops waiting for it (`cancel_grace`).
#[derive(Debug, Clone)]
pub(crate) struct Cancel {
    /// Cancelled when the task is revoked. One per run.
    pub(crate) token: CancellationToken,
    /// `cancel_grace`.
    pub(crate) grace: Duration,
}

/// Why the worker stopped waiting for a plain function.
#[derive(Debug, Clone, Copy)]
enum Why {
    /// It ran past this time limit.
    Limit(Duration),
    /// Its task was cancelled and it did not return within this grace.
    Cancelled(Duration),
}

impl Overruns {
    /// A count bounded by `max` (at least 1), reported in `gauge`.
    pub(crate) fn new(max: usize, gauge: Gauge) -> Self {
        Overruns {
            running: AtomicUsize::new(0),
            max: max.max(1),
            gauge,
            exhausted: CancellationToken::new(),
        }
    }

    /// Threads running past their limit now.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// The bound.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Cancelled once the count reached the bound: the worker must stop.
    pub(crate) fn exhausted(&self) -> &CancellationToken {
        &self.exhausted
    }

    /// Runs `f` on the blocking pool and waits for it at most `limit`: its result (or panic),
    /// or [`Overran`] at the limit, when its thread is counted until `f` returns.
    pub(crate) async fn run_blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce() -> T + Send + 'static,
        limit: Duration,
    ) -> Result<Result<T, JoinError>, Overran> {
        self.run_stoppable(f, Some(limit), None).await
    }

    /// Runs `f` on the blocking pool and waits for it until it returns, `limit` passes, or
    /// `cancel`'s token is cancelled and its grace period passes: its result (or panic), or
    /// [`Overran`] when the worker stopped waiting, its thread then counted until `f` returns.
    pub(crate) async fn run_stoppable<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce() -> T + Send + 'static,
        limit: Option<Duration>,
        cancel: Option<&Cancel>,
    ) -> Result<Result<T, JoinError>, Overran> {
        let state = Arc::new(AtomicU8::new(RUNNING));
        let ended = Ended {
            state: state.clone(),
            overruns: self.clone(),
        };
        let mut handle = tokio::task::spawn_blocking(move || {
            let _ended = ended; // dropped when `f` returns or unwinds
            f()
        });
        let timed_out = async {
            match limit {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let abandoned = async {
            match cancel {
                Some(cancel) => {
                    cancel.token.cancelled().await;
                    tokio::time::sleep(cancel.grace).await;
                }
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            joined = &mut handle => return Ok(joined),
            () = timed_out => Why::Limit(limit.unwrap_or_default()),
            () = abandoned => Why::Cancelled(cancel.map(|c| c.grace).unwrap_or_default()),
        };
        if state
            .compare_exchange(RUNNING, OVERRUN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.overran(why);
            Err(Overran)
        } else {
            // It returned at the limit, in the instant between the two: take its result.
            Ok(handle.await)
        }
    }

    /// One more thread runs on after the worker stopped waiting for it (`why`).
    fn overran(&self, why: Why) {
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.gauge.set(i64::try_from(running).unwrap_or(i64::MAX));
        match why {
            Why::Limit(limit) => tracing::warn!(
                ?limit,
                overrun_threads = running,
                max_overrun_threads = self.max,
                "a plain function ran past its time limit; its thread runs on in the background"
            ),
            Why::Cancelled(grace) => tracing::warn!(
                ?grace,
                overrun_threads = running,
                max_overrun_threads = self.max,
                "a plain function did not stop within cancel_grace of its task being cancelled; \
                 its thread runs on in the background"
            ),
        }
        if running >= self.max && !self.exhausted.is_cancelled() {
            tracing::error!(
                overrun_threads = running,
                "max_overrun_threads reached: the worker stops, so that a fresh process replaces it"
            );
            self.exhausted.cancel();
        }
    }

    /// A thread counted by [`Overruns::overran`] ended.
    fn ended(&self) {
        let running = self.running.fetch_sub(1, Ordering::SeqCst) - 1;
        self.gauge.set(i64::try_from(running).unwrap_or(i64::MAX));
        tracing::info!(
            overrun_threads = running,
            "a plain function the worker stopped waiting for (time limit or force cancel) \
             returned; its thread is free"
        );
    }
}

/// Marks a run ended when dropped (on the function's thread, after it returned or panicked),
/// and uncounts its thread if it had overrun.
struct Ended {
    state: Arc<AtomicU8>,
    overruns: Arc<Overruns>,
}

impl Drop for Ended {
    fn drop(&mut self) {
        if self.state.swap(ENDED, Ordering::SeqCst) == OVERRUN {
            self.overruns.ended();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overrun_threads_are_counted_until_they_end_and_bounded() {
        let overruns = Arc::new(Overruns::new(2, Gauge::default()));
        let quick = overruns
            .run_blocking(|| 7, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((quick, overruns.running()), (7, 0));

        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
        let limit = Duration::from_millis(20);
        let held = overruns
            .run_blocking(
                move || {
                    gate.recv().expect("the test releases it");
                    ended_tx.send(()).expect("the test waits");
                },
                limit,
            )
            .await;
        assert_eq!(held.unwrap_err(), Overran);
        assert_eq!(overruns.running(), 1);
        assert_eq!(overruns.gauge.get(), 1);
        assert!(!overruns.exhausted().is_cancelled());

        // A panic past the limit ends the thread too.
        let (release_panic, gate_panic) = std::sync::mpsc::channel::<()>();
        let panicking = overruns
            .run_blocking(
                move || {
                    gate_panic.recv().expect("the test releases it");
                    panic!("late");
                },
                limit,
            )
            .await;
        assert_eq!(panicking.unwrap_err(), Overran);
        assert_eq!(overruns.running(), 2);
        assert!(overruns.exhausted().is_cancelled(), "the bound is 2");

        release.send(()).unwrap();
        ended.recv().unwrap();
        release_panic.send(()).unwrap();
        // The counts drop on the threads themselves: poll for them.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while overruns.running() > 0 {
            assert!(std::time::Instant::now() < deadline, "threads ended");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(overruns.gauge.get(), 0);
    }
}
