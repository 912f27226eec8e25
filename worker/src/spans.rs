//! The worker's `tracing` span of each run (a task, or one call of a batch), a child of the
//! task's trace context ([`rask_common::trace`]): its producer's span. Named `rask.run`, with
//! the task key, function, attempt, worker and outcome.
//!
//! A span is made only when it can be seen: the task carries a trace context, or this worker
//! exports spans (`otlp_endpoint`). Otherwise a run gets [`Span::none`], which costs a branch.

use rask_common::{Outcome, Settings, TaskMessage};
use tracing::Span;

/// The span of a run of `message` on worker `worker` (see the module docs).
pub(crate) fn run(settings: &Settings, worker: &str, message: &TaskMessage) -> Span {
    if message.trace.is_none() && settings.otlp_endpoint.is_empty() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "rask.run",
        otel.kind = "consumer",
        rask.key = %message.key,
        rask.function = %message.function,
        rask.attempt = message.attempt,
        rask.worker = worker,
        rask.outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(trace) = &message.trace {
        trace.parent(&span);
    }
    span
}

/// Records how the run of `span` ended: `succeeded`, or the failure's kind (the span's status
/// is then an error).
pub(crate) fn finished(span: &Span, outcome: &Outcome) {
    if span.is_none() {
        return;
    }
    match outcome {
        Outcome::Value(_) => {
            span.record("rask.outcome", "succeeded");
        }
        Outcome::Failure(failure) => {
            span.record("rask.outcome", tracing::field::debug(&failure.kind));
            span.record("otel.status_code", "error");
        }
    }
}

/// Records that the run of `span` failed and is retried (a new attempt, its own run).
pub(crate) fn retried(span: &Span) {
    if !span.is_none() {
        span.record("rask.outcome", "retried");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rask_common::TaskKey;

    #[test]
    fn runs_without_context_or_exporter_get_no_span() {
        let message = TaskMessage::new(TaskKey::new("inc-1").unwrap(), "inc", vec![0x90]);
        assert!(run(&Settings::default(), "w", &message).is_none());
    }
}
