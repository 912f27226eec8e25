//! Hedged execution ([`rask_common::hedge`]), done by the client that submitted the tasks: it
//! knows when each was published and learns when each outcome is stored (the completion
//! subscription it has anyway), so workers need nothing new. One hedger runs in the background
//! per hedged `submit` or `map`, until every task of it has an outcome or the client closes:
//!
//! - [`Tracker`] decides when a task is late. A worker's start is not visible to the client,
//!   so a task's clock starts when it is *presumed running*: when a task published after it by
//!   the same call has an outcome (queues are first in, first out, so it was delivered before
//!   that one), or when it is the oldest of the call without one (the first task, or the
//!   straggler left at the end). A task waiting behind a backlog is thus never hedged: copies
//!   would only double the backlog.
//! - A late task (its clock past the policy's threshold, once) gets a second copy of its message,
//!   at the highest priority (`max_priority`, so it is not queued behind later work),
//!   after one `MGET` that skips tasks whose outcome was stored meanwhile; copies are counted in
//!   `{prefix}:hedges`. A copy is marked (`TaskMessage::hedge`): the worker that receives it
//!   reads whether the task has an outcome (one `GET`) and does not run it if so.
//! - When a hedged task's outcome is stored (the first of the two copies wins: write-once), its
//!   key is revoked as a force cancel revokes it ([`rask_common::revocations`]): the worker
//!   running the other copy stops it, a worker receiving it later drops it; both write a
//!   `Cancelled` outcome, a no-op under the stored one.

use std::collections::VecDeque;
use std::time::Duration;

use rask_common::hedge::{Hedge, P95_SAMPLES};
use rask_common::{TaskKey, TaskMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::Error;

/// First and largest pause before reading outcomes again after Redis failed.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));

impl Client {
    /// The hedge copies of `function` published so far in this deployment, by every client
    /// (`{prefix}:hedges`, see [`crate::TaskOptions::hedge`]): the extra runs hedging cost, at
    /// most (a copy dropped by a worker because the other copy finished first never ran).
    ///
    /// # Errors
    /// [`crate::Error::Common`] if Redis fails.
    pub async fn hedge_copies(&self, function: &str) -> crate::Result<u64> {
        Ok(rask_common::hedge::copies(self.store(), function).await?)
    }
}

/// The tasks of one hedged call, as published: messages (with options applied) and when each
/// may have started at the earliest (published, plus any countdown).
pub(crate) struct Armed {
    messages: Vec<TaskMessage>,
    published: Vec<Instant>,
}

impl Armed {
    /// Nothing armed yet.
    pub(crate) fn new() -> Self {
        Armed {
            messages: Vec::new(),
            published: Vec::new(),
        }
    }

    /// Notes `message`, published now to start after `delay`.
    pub(crate) fn note(&mut self, message: &TaskMessage, delay: Duration) {
        self.messages.push(message.clone());
        self.published.push(Instant::now() + delay);
    }
}

/// How long [`Hedgers::finish`] waits for the hedgers' last revocations.
const FINISH_WAIT: Duration = Duration::from_secs(5);

/// The hedgers of one client, running in the background.
#[derive(Default)]
pub(crate) struct Hedgers {
    tasks: tokio_util::task::TaskTracker,
    /// Cancelled when the client closes: each hedger revokes the other copies of its hedged
    /// tasks that have an outcome, then ends.
    closing: tokio_util::sync::CancellationToken,
}

impl Hedgers {
    /// Starts hedging the tasks of `armed` by `policy`, in the background.
    pub(crate) fn spawn(&self, client: Client, policy: Hedge, function: String, armed: Armed) {
        if armed.messages.is_empty() || self.closing.is_cancelled() {
            return;
        }
        let closing = self.closing.clone();
        self.tasks
            .spawn(run(client, policy, function, armed, closing));
    }

    /// Stops every hedger (each revokes the other copies of its hedged tasks with an outcome
    /// first) and waits for them, at most [`FINISH_WAIT`].
    pub(crate) async fn finish(&self) {
        self.closing.cancel();
        self.tasks.close();
        if tokio::time::timeout(FINISH_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "hedgers did not finish within {FINISH_WAIT:?}; other copies may run on"
            );
        }
    }
}

/// The hedger of one call (see the module docs).
async fn run(
    client: Client,
    policy: Hedge,
    function: String,
    armed: Armed,
    closing: tokio_util::sync::CancellationToken,
) {
    let Armed {
        mut messages,
        published,
    } = armed;
    let pace = match policy {
        Hedge::P95 { .. } => rask_common::batch::read_pace(client.store(), &function)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(function, error = %e, "cannot read the run time workers measured");
                None
            }),
        Hedge::After(_) => None,
    };
    let mut tracker = Tracker::new(policy, pace, published);
    let keys: Vec<TaskKey> = messages.iter().map(|m| m.key.clone()).collect();
    // The waiter runs on its own, so that a timer never interrupts one of its reads.
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let watcher = tokio::spawn(watch(client.clone(), keys, done_tx));
    let max_priority = client.settings().max_priority;
    loop {
        let deadline = tracker.next_deadline();
        let due = tokio::select! {
            index = done.recv() => {
                let Some(index) = index else { break };
                let mut finished = vec![index];
                while let Ok(more) = done.try_recv() {
                    finished.push(more);
                }
                let now = Instant::now();
                let mut losers: Vec<TaskKey> = Vec::new();
                for i in finished {
                    if tracker.completed(i, now) {
                        losers.push(messages[i].key.clone());
                    }
                    // Its arguments are not needed any more.
                    messages[i].args = Vec::new();
                }
                revoke(&client, &losers).await;
                continue;
            }
            () = sleep_until(deadline) => tracker.due(Instant::now()),
            () = closing.cancelled() => {
                // The client closes: revoke the other copies of hedged tasks already finished.
                let hedged = tracker.hedged_open();
                let finished = finished(&client, &messages, &hedged).await;
                let losers: Vec<TaskKey> = finished.iter().map(|&i| messages[i].key.clone()).collect();
                revoke(&client, &losers).await;
                break;
            }
        };
        let unfinished: Vec<usize> = {
            let stored = finished(&client, &messages, &due).await;
            due.into_iter().filter(|i| !stored.contains(i)).collect()
        };
        if unfinished.is_empty() {
            continue;
        }
        let copies: Vec<TaskMessage> = unfinished
            .iter()
            .map(|&i| {
                // Each task is hedged once: from now on only its key is needed.
                let args = std::mem::take(&mut messages[i].args);
                let mut copy = messages[i].clone();
                copy.args = args;
                copy.priority = max_priority;
                copy.hedge = true;
                copy
            })
            .collect();
        tracing::info!(function, copies = copies.len(), "hedging late tasks");
        // Counted first, so that a copy's outcome never comes before its count.
        let count = unfinished.len() as u64;
        if let Err(e) = rask_common::hedge::count_copies(client.store(), &function, count).await {
            tracing::warn!(function, error = %e, "cannot count hedge copies");
        }
        if let Err(e) = client.publish(copies.into_iter().map(Ok)).await {
            tracing::warn!(function, error = %e, "publishing hedge copies failed");
        }
    }
    watcher.abort();
}

/// Sends the index of each of `keys` as its outcome is stored, until all have one or the
/// client stops listening.
async fn watch(client: Client, keys: Vec<TaskKey>, done: mpsc::UnboundedSender<usize>) {
    let mut waiter = client.waiter(keys);
    let mut pause = BACKOFF.0;
    while let Some(next) = waiter.next().await {
        match next {
            Ok((index, _)) => {
                pause = BACKOFF.0;
                if done.send(index).is_err() {
                    return;
                }
            }
            Err(Error::ListenerStopped) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "hedging: reading outcomes failed");
                if waiter.pause(pause).await.is_err() {
                    return;
                }
                pause = (pause * 2).min(BACKOFF.1);
            }
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Of the tasks at `indices`, those whose outcome is stored (one `MGET`; none if Redis cannot
/// say).
async fn finished(client: &Client, messages: &[TaskMessage], indices: &[usize]) -> Vec<usize> {
    if indices.is_empty() {
        return Vec::new();
    }
    let keys: Vec<TaskKey> = indices.iter().map(|&i| messages[i].key.clone()).collect();
    match client.store().get_outcomes(&keys).await {
        Ok(found) => indices
            .iter()
            .zip(found)
            .filter(|(_, outcome)| outcome.is_some())
            .map(|(&i, _)| i)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "hedging: cannot read outcomes");
            Vec::new()
        }
    }
}

/// Revokes the keys of hedged tasks that have an outcome, so that the other copy stops.
async fn revoke(client: &Client, keys: &[TaskKey]) {
    if keys.is_empty() {
        return;
    }
    let wait = client.settings().reconnect_max_wait;
    let revoked = crate::retry::store_retrying("revoking hedge losers", wait, || async {
        Ok(client.store().revoke(keys).await?)
    })
    .await;
    match revoked {
        Ok(()) => tracing::debug!(
            tasks = keys.len(),
            "revoked the other copies of hedged tasks"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot revoke the other copies of hedged tasks"),
    }
}

/// Where one task of the call stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// No outcome yet: since when it is presumed running, if it is, and whether it has a copy.
    Open {
        running_since: Option<Instant>,
        hedged: bool,
    },
    /// It has an outcome.
    Done,
}

/// Which tasks of a call are late (see the module docs): pure bookkeeping, no I/O.
pub(crate) struct Tracker {
    policy: Hedge,
    pace: Option<Duration>,
    published: Vec<Instant>,
    states: Vec<State>,
    /// Every index under it is presumed running or done.
    running_upto: usize,
    /// The first index without an outcome.
    oldest: usize,
    /// Tasks presumed running without a copy, in the order their clocks started (so their
    /// deadlines are in order too); done or hedged ones are skipped when met.
    clocks: VecDeque<usize>,
    /// Completion times (publish to outcome) seen, for [`Hedge::P95`].
    samples: Vec<Duration>,
    /// The 95th percentile of `samples`, and how many samples it was computed from.
    p95: Option<(Duration, usize)>,
}

impl Tracker {
    /// A tracker of tasks published at `published` (in order): the first is presumed running
    /// from its publication.
    pub(crate) fn new(policy: Hedge, pace: Option<Duration>, published: Vec<Instant>) -> Self {
        let n = published.len();
        let mut tracker = Tracker {
            policy,
            pace,
            states: vec![
                State::Open {
                    running_since: None,
                    hedged: false
                };
                n
            ],
            published,
            running_upto: 0,
            oldest: 0,
            clocks: VecDeque::new(),
            samples: Vec::new(),
            p95: None,
        };
        if n > 0 {
            let first = tracker.published[0];
            tracker.start_clock(0, first);
        }
        tracker
    }

    /// Notes the outcome of task `index` at `now`; returns whether it had a hedge copy (whose
    /// other copy is to be revoked).
    pub(crate) fn completed(&mut self, index: usize, now: Instant) -> bool {
        let State::Open { hedged, .. } = self.states[index] else {
            return false;
        };
        self.states[index] = State::Done;
        if matches!(self.policy, Hedge::P95 { .. }) {
            self.samples
                .push(now.saturating_duration_since(self.published[index]));
        }
        // Tasks published before it were delivered before it: they run (or ran).
        for earlier in self.running_upto..index {
            self.start_clock(earlier, now);
        }
        self.running_upto = self.running_upto.max(index + 1);
        while self.oldest < self.states.len() && self.states[self.oldest] == State::Done {
            self.oldest += 1;
        }
        if self.oldest < self.states.len() {
            self.start_clock(self.oldest, now);
        }
        hedged
    }

    /// When the next task becomes late, if one can.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        let threshold = self.threshold()?;
        while let Some(&front) = self.clocks.front() {
            match self.states[front] {
                State::Open {
                    running_since: Some(since),
                    hedged: false,
                } => return Some(since + threshold),
                _ => {
                    self.clocks.pop_front();
                }
            }
        }
        None
    }

    /// The tasks late at `now`, now marked hedged (each is hedged once).
    pub(crate) fn due(&mut self, now: Instant) -> Vec<usize> {
        let mut due = Vec::new();
        while let Some(deadline) = self.next_deadline() {
            if deadline > now {
                break;
            }
            let index = self.clocks.pop_front().expect("a deadline has a clock");
            if let State::Open { hedged, .. } = &mut self.states[index] {
                *hedged = true;
            }
            due.push(index);
        }
        due
    }

    /// The tasks with a hedge copy and no outcome yet.
    pub(crate) fn hedged_open(&self) -> Vec<usize> {
        self.states
            .iter()
            .enumerate()
            .filter(|(_, state)| matches!(state, State::Open { hedged: true, .. }))
            .map(|(i, _)| i)
            .collect()
    }

    /// Starts the clock of task `index` at `at` unless it runs already or is done.
    fn start_clock(&mut self, index: usize, at: Instant) {
        if let State::Open {
            running_since: since @ None,
            ..
        } = &mut self.states[index]
        {
            *since = Some(at);
            self.clocks.push_back(index);
        }
    }

    /// The policy's wait now (`None`: not known yet).
    fn threshold(&mut self) -> Option<Duration> {
        let p95 = self.p95();
        self.policy.threshold(p95, self.pace)
    }

    /// The 95th percentile of the completion times seen, from [`P95_SAMPLES`] of them;
    /// computed again when the samples grew by an eighth.
    fn p95(&mut self) -> Option<Duration> {
        let n = self.samples.len();
        if n < P95_SAMPLES {
            return None;
        }
        match self.p95 {
            Some((p95, from)) if n < from + from / 8 => Some(p95),
            _ => {
                let mut sorted = self.samples.clone();
                sorted.sort_unstable();
                let p95 = sorted[(n * 95 / 100).min(n - 1)];
                self.p95 = Some((p95, n));
                Some(p95)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn tracker(policy: Hedge, n: usize, t0: Instant) -> Tracker {
        Tracker::new(policy, None, vec![t0; n])
    }

    #[test]
    fn a_lone_task_is_hedged_once_after_the_wait() {
        let t0 = Instant::now();
        let mut t = tracker(Hedge::After(100 * MS), 1, t0);
        assert_eq!(t.next_deadline(), Some(t0 + 100 * MS));
        assert!(t.due(t0 + 99 * MS).is_empty());
        assert_eq!(t.due(t0 + 100 * MS), [0]);
        assert_eq!(t.next_deadline(), None, "hedged once only");
        assert!(t.completed(0, t0 + 150 * MS), "it had a copy");
        assert!(!t.completed(0, t0 + 151 * MS), "an outcome counts once");
    }

    #[test]
    fn tasks_behind_a_backlog_are_not_hedged_until_presumed_running() {
        let t0 = Instant::now();
        let mut t = tracker(Hedge::After(10 * MS), 100, t0);
        // Only the first runs as far as the client can tell; the rest wait in the queue.
        assert_eq!(t.due(t0 + 500 * MS), [0]);
        assert_eq!(t.next_deadline(), None);
        // Task 5 finishes: 1..5 were delivered before it, so they run from now on.
        let t1 = t0 + 600 * MS;
        assert!(!t.completed(5, t1));
        assert_eq!(t.next_deadline(), Some(t1 + 10 * MS));
        assert_eq!(t.due(t1 + 10 * MS), [1, 2, 3, 4]);
        // Task 6 is not presumed running: nothing after it finished and 0 is older.
        assert_eq!(t.next_deadline(), None);
        assert!(t.completed(0, t1 + 20 * MS));
    }

    #[test]
    fn the_oldest_task_without_an_outcome_runs() {
        let t0 = Instant::now();
        let mut t = tracker(Hedge::After(10 * MS), 3, t0);
        assert!(!t.completed(0, t0 + MS));
        assert_eq!(
            t.next_deadline(),
            Some(t0 + 11 * MS),
            "task 1 is the oldest"
        );
        assert!(!t.completed(1, t0 + 2 * MS));
        assert!(!t.completed(2, t0 + 3 * MS));
        assert_eq!(t.next_deadline(), None, "all done");
    }

    #[test]
    fn p95_waits_for_samples_and_then_follows_them() {
        let t0 = Instant::now();
        let mut t = tracker(Hedge::P95 { factor: 2.0 }, 40, t0);
        assert_eq!(t.next_deadline(), None, "no samples, no pace");
        for i in 1..=20 {
            t.completed(i, t0 + 50 * MS);
        }
        // Every completion took 50 ms: task 0 is late at 100 ms.
        assert_eq!(t.next_deadline(), Some(t0 + 100 * MS));
        assert_eq!(t.due(t0 + 100 * MS), [0]);

        let paced = Tracker::new(Hedge::P95 { factor: 3.0 }, Some(20 * MS), vec![t0]);
        let mut paced = paced;
        assert_eq!(
            paced.next_deadline(),
            Some(t0 + 60 * MS),
            "the average until then"
        );
    }
}
