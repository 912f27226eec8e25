//! [`TaskOptions`]: how a task is scheduled and retried (countdown or eta, priority, retry
//! policy, time limit, resources needed) and which pool of workers runs it: for the client's `submit_with` and
//! `map_with`, and per graph node with [`crate::Delayed::with_options`]. Re-exported by the
//! `rask` crate as `rask::TaskOptions`. [`TaskOptions::apply`] is the one place where options
//! become message fields.

use std::time::{Duration, SystemTime};

use crate::hedge::Hedge;
use crate::retry::duration_ms;
use crate::{Pool, Resources, RetryPolicy, Settings, TaskMessage};

/// Scheduling options for submitted tasks. The default runs a task as soon as a worker is free,
/// at priority 0, once, with the workers' `task_time_limit`.
///
/// ```
/// use std::time::Duration;
/// use rask_common::{RetryPolicy, TaskOptions};
///
/// let options = TaskOptions::new()
///     .countdown(Duration::from_secs(10))
///     .priority(5)
///     .retry(RetryPolicy::new(3))
///     .time_limit(Duration::from_secs(30));
/// assert_eq!(options.delay(), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOptions {
    start: Option<Start>,
    priority: u8,
    retry: Option<RetryPolicy>,
    time_limit: Option<Duration>,
    resources: Resources,
    /// The pool asked for, or why its name is not one (reported when the task is submitted).
    pool: Option<std::result::Result<Pool, String>>,
    /// Calls per batch message in a `map` ([`TaskOptions::batch`]); `None`: sized by run time.
    batch: Option<usize>,
    /// When a late task gets a second copy ([`TaskOptions::hedge`]); `None`: never.
    hedge: Option<Hedge>,
}

/// When a task may start.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Start {
    After(Duration),
    At(SystemTime),
}

impl TaskOptions {
    /// The defaults: run now, priority 0, no retries, the workers' time limit.
    pub fn new() -> Self {
        TaskOptions::default()
    }

    /// Runs the task no earlier than `delay` from submission. The task waits in the broker
    /// (a delay queue), not in a worker.
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.start = Some(Start::After(delay));
        self
    }

    /// Runs the task no earlier than `at` (a time in the past means now).
    pub fn eta(mut self, at: SystemTime) -> Self {
        self.start = Some(Start::At(at));
        self
    }

    /// Priority of the task: waiting tasks of a higher priority are delivered first. 0 (the
    /// default) is lowest; values above the `max_priority` setting count as `max_priority`.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Retries the task by `policy` when its function fails with a retryable error.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Fails the task with `TimedOut` if it runs longer than `limit`.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// Sends the task to the workers of `pool` (see [`crate::pool`]), whatever the
    /// routing table (setting `routes`) says; its retries stay in that pool. Without it, the
    /// routing table's pool for the function, else the default pool.
    ///
    /// ```
    /// use rask_common::{Pool, TaskOptions};
    ///
    /// let gpu = TaskOptions::new().pool("gpu");
    /// assert_eq!(gpu.pool_name().map(Pool::as_str), Some("gpu"));
    /// assert_eq!(TaskOptions::new().pool(Pool::new("gpu").unwrap()), gpu);
    /// ```
    ///
    /// A name that is not a valid pool name (see [`Pool::new`]) fails the submission with
    /// [`crate::Error::Common`] before anything is published.
    pub fn pool(mut self, pool: impl AsRef<str>) -> Self {
        self.pool = Some(Pool::new(pool.as_ref()).map_err(|e| e.to_string()));
        self
    }

    /// The pool set with [`TaskOptions::pool`], if any (and valid).
    pub fn pool_name(&self) -> Option<&Pool> {
        self.pool.as_ref().and_then(|p| p.as_ref().ok())
    }

    /// The pool set with [`TaskOptions::pool`], if any.
    ///
    /// # Errors
    /// [`crate::Error::Settings`] if its name is not a valid pool name.
    pub fn checked_pool(&self) -> crate::Result<Option<&Pool>> {
        match &self.pool {
            None => Ok(None),
            Some(Ok(pool)) => Ok(Some(pool)),
            Some(Err(why)) => Err(crate::Error::Settings(why.clone())),
        }
    }

    /// Runs the task only on a worker with these resources free, e.g. `[("gpu", 1)]` or
    /// `"gpu=1,mem=4GiB".parse()?` (amounts in the unit the workers' `resources` setting uses;
    /// an amount of 0 is left out). The worker holds them for the task's run and tells the task
    /// which slots it got (e.g. GPU 0 or 1). A task needing more than every live worker of the
    /// queue has fails with `ResourceUnavailable` naming the resource. Replaces earlier needs.
    pub fn resources<N: Into<String>>(mut self, needs: impl IntoIterator<Item = (N, u64)>) -> Self {
        self.resources = needs.into_iter().collect();
        self
    }

    /// Packs at most `calls` calls of a `map` into one message ([`crate::batch`]): the worker
    /// runs them one after the other, stores their outcomes together and acknowledges the
    /// message once; each call keeps its own key, outcome, retries and failure. `1` turns
    /// batching off (one message per task); `0` counts as `1`. Without it, `map` sizes batches
    /// from the function's measured run time ([`crate::batch::size_for`]). Calls that need
    /// resources are never batched. On the nodes of a graph (`Delayed::with_options`), it
    /// sizes the batches its ready sources of the function are published in (the smallest
    /// any node of the function sets).
    pub fn batch(mut self, calls: usize) -> Self {
        self.batch = Some(calls.max(1));
        self
    }

    /// Hedged execution: when the task has not finished `after` it started running (as the
    /// submitting client sees it), a second copy of its message is published; the first outcome
    /// stored wins (write-once) and the other copy is revoked (a worker running it stops, one
    /// receiving it later drops it). For tasks whose runs are sometimes slow for reasons of
    /// their own (a slow machine, a pause), not for slow inputs: both copies would be slow.
    /// Each copy is an extra run, counted in `{prefix}:hedges`. The client that submits does
    /// the hedging, for as long as it is connected: tasks of a `map` with it are not batched.
    /// See docs/protocol.md, "Hedged execution".
    ///
    /// ```
    /// use std::time::Duration;
    /// use rask_common::TaskOptions;
    ///
    /// let options = TaskOptions::new().hedge(Duration::from_millis(200));
    /// assert!(options.hedge_policy().is_some());
    /// assert_eq!(options.batch_size(), Some(1), "hedged tasks are not batched");
    /// ```
    pub fn hedge(mut self, after: Duration) -> Self {
        self.hedge = Some(Hedge::After(after));
        self
    }

    /// [`TaskOptions::hedge`] with a wait of `factor` times the 95th percentile of the
    /// completion times of the call's tasks seen so far (from 20 completed; before that,
    /// `factor` times the average run time workers published for the function, and no hedging
    /// while neither is known). A factor under 1 counts as 1.
    pub fn hedge_p95(mut self, factor: f64) -> Self {
        self.hedge = Some(Hedge::P95 { factor });
        self
    }

    /// The hedging set with [`TaskOptions::hedge`] or [`TaskOptions::hedge_p95`], if any.
    pub fn hedge_policy(&self) -> Option<Hedge> {
        self.hedge
    }

    /// The batch size set with [`TaskOptions::batch`], if any; 1 for hedged calls
    /// ([`TaskOptions::hedge`]), which travel one per message.
    pub fn batch_size(&self) -> Option<usize> {
        if self.hedge.is_some() {
            // A hedge copy is a task message of its own: hedged calls travel alone.
            return Some(1);
        }
        self.batch
    }

    /// Whether calls with these options may share a message: they need no resources (a worker
    /// holds resources per task).
    pub fn batchable(&self) -> bool {
        self.resources.is_empty()
    }

    /// How long from now the task waits before it may run.
    pub fn delay(&self) -> Duration {
        match self.start {
            None => Duration::ZERO,
            Some(Start::After(delay)) => delay,
            Some(Start::At(at)) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        }
    }

    /// Whether a start time is set (a countdown or an eta, even one already past).
    pub fn is_delayed(&self) -> bool {
        self.start.is_some()
    }

    /// `message` with these options' priority (at most `max_priority`), retry policy, time
    /// limit and pool (routed by [`Settings::route`]: this pool, else the routing table's): the
    /// one place where options become message fields. The start time is not a field: the
    /// publisher routes the message through a delay queue ([`TaskOptions::delay`]).
    pub fn apply(&self, mut message: TaskMessage, settings: &Settings) -> TaskMessage {
        message.priority = self.priority.min(settings.max_priority);
        message.retry = self.retry;
        message.time_limit_ms = self.time_limit.map(|d| duration_ms(d).max(1));
        message.resources = self.resources.clone();
        message.pool = settings.route(&message.function, self.pool_name());
        message
    }
}

#[cfg(test)]
mod tests {
    use crate::TaskKey;

    use super::*;

    #[test]
    fn apply_sets_fields_and_clamps_priority() {
        let message = TaskMessage::new(TaskKey::new("k").unwrap(), "inc", vec![0x90]);
        let options = TaskOptions::new()
            .priority(200)
            .retry(RetryPolicy::new(4))
            .time_limit(Duration::from_millis(1500));
        let settings = Settings::default();
        let m = options.apply(message.clone(), &settings);
        assert_eq!(m.priority, 9);
        assert_eq!(m.retry, Some(RetryPolicy::new(4)));
        assert_eq!(m.time_limit_ms, Some(1500));
        assert_eq!(m.pool, None);
        assert_eq!(
            TaskOptions::new().apply(message.clone(), &settings),
            message
        );
    }

    #[test]
    fn the_pool_option_wins_over_the_routing_table() {
        let gpu = Pool::new("gpu").unwrap();
        let routed = Settings {
            routes: [("inc".to_owned(), gpu.clone())].into(),
            ..Settings::default()
        };
        let message = TaskMessage::new(TaskKey::new("k").unwrap(), "inc", vec![0x90]);
        let m = TaskOptions::new().apply(message.clone(), &routed);
        assert_eq!(m.pool, Some(gpu.clone()));
        let m = TaskOptions::new()
            .pool(Pool::default())
            .apply(message.clone(), &routed);
        assert_eq!(m.pool, None);
        let m = TaskOptions::new()
            .pool(gpu.clone())
            .apply(message, &Settings::default());
        assert_eq!(m.pool, Some(gpu));
        let bad = TaskOptions::new().pool("g.pu");
        let err = bad.checked_pool().unwrap_err().to_string();
        assert!(err.contains("g.pu"), "{err}");
        assert_eq!(
            TaskOptions::new()
                .pool("gpu")
                .checked_pool()
                .unwrap()
                .map(Pool::as_str),
            Some("gpu")
        );
    }

    #[test]
    fn eta_in_the_past_means_now() {
        let past = SystemTime::now() - Duration::from_secs(5);
        assert_eq!(TaskOptions::new().eta(past).delay(), Duration::ZERO);
        let later = SystemTime::now() + Duration::from_secs(60);
        let delay = TaskOptions::new().eta(later).delay();
        assert!(delay > Duration::from_secs(50) && delay <= Duration::from_secs(60));
    }
}
