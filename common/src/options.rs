//! [`TaskOptions`]: how a task is scheduled and retried (countdown or eta, priority, retry
//! policy, time limit): for the client's `submit_with` and `map_with`, and per graph node with
//! [`crate::Delayed::with_options`]. Re-exported by the `rask` crate as `rask::TaskOptions`.
//! [`TaskOptions::apply`] is the one place where options become message fields.

use std::time::{Duration, SystemTime};

use crate::retry::duration_ms;
use crate::{RetryPolicy, TaskMessage};

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
// Not `Copy`: options of pools and resources own their names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOptions {
    start: Option<Start>,
    priority: u8,
    retry: Option<RetryPolicy>,
    time_limit: Option<Duration>,
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

    /// `message` with these options' priority (at most `max_priority`), retry policy and time
    /// limit: the one place where options become message fields. The start time is not a
    /// field: the publisher routes the message through a delay queue ([`TaskOptions::delay`]).
    pub fn apply(&self, mut message: TaskMessage, max_priority: u8) -> TaskMessage {
        message.priority = self.priority.min(max_priority);
        message.retry = self.retry;
        message.time_limit_ms = self.time_limit.map(|d| duration_ms(d).max(1));
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
        let m = options.apply(message.clone(), 9);
        assert_eq!(m.priority, 9);
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
