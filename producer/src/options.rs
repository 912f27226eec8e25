//! [`TaskOptions`]: how a submitted task is scheduled and retried (countdown or eta, priority,
//! retry policy, time limit, resources needed), for [`crate::Client::submit_with`] and [`crate::Client::map_with`].

use std::time::{Duration, SystemTime};

use rask_common::retry::duration_ms;
use rask_common::{Resources, RetryPolicy, TaskMessage};

/// Scheduling options for submitted tasks. The default runs a task as soon as a worker is free,
/// at priority 0, once, with the workers' `task_time_limit`.
///
/// ```
/// use std::time::Duration;
/// use rask::{RetryPolicy, TaskOptions};
///
/// let options = TaskOptions::new()
///     .countdown(Duration::from_secs(10))
///     .priority(5)
///     .retry(RetryPolicy::new(3))
///     .time_limit(Duration::from_secs(30))
///     .resources([("gpu", 1)]);
/// assert_eq!(options.delay(), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOptions {
    start: Option<Start>,
    priority: u8,
    retry: Option<RetryPolicy>,
    time_limit: Option<Duration>,
    resources: Resources,
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

    /// Runs the task only on a worker with these resources free, e.g. `[("gpu", 1)]` or
    /// `"gpu=1,mem=4GiB".parse()?` (amounts in the unit the workers' `resources` setting uses;
    /// an amount of 0 is left out). The worker holds them for the task's run and tells the task
    /// which slots it got (e.g. GPU 0 or 1). A task needing more than every live worker of the
    /// queue has fails with `ResourceUnavailable` naming the resource. Replaces earlier needs.
    pub fn resources<N: Into<String>>(mut self, needs: impl IntoIterator<Item = (N, u64)>) -> Self {
        self.resources = needs.into_iter().collect();
        self
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

    /// `message` with these options' priority (at most `max_priority`), retry policy and time
    /// limit.
    pub(crate) fn apply(&self, mut message: TaskMessage, max_priority: u8) -> TaskMessage {
        message.priority = self.priority.min(max_priority);
        message.retry = self.retry;
        message.time_limit_ms = self.time_limit.map(|d| duration_ms(d).max(1));
        message.resources = self.resources.clone();
        message
    }
}

#[cfg(test)]
mod tests {
    use rask_common::TaskKey;

    use super::*;

    #[test]
    fn apply_sets_fields_and_clamps_priority() {
        let message = TaskMessage::new(TaskKey::new("k").unwrap(), "inc", vec![0x90]);
        let options = TaskOptions::new()
            .priority(200)
            .retry(RetryPolicy::new(4))
            .time_limit(Duration::from_millis(1500))
            .resources([("gpu", 1), ("mem", 0)]);
        let m = options.apply(message.clone(), 9);
        assert_eq!(m.priority, 9);
        assert_eq!(m.resources.to_string(), "gpu=1");
        assert_eq!(m.retry, Some(RetryPolicy::new(4)));
        assert_eq!(m.time_limit_ms, Some(1500));
        assert_eq!(TaskOptions::new().apply(message.clone(), 9), message);
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
