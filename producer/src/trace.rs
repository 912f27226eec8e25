//! The trace a client's submit, map or graph publishes its tasks in ([`rask_common::trace`]).
//!
//! Inside a caller's `tracing` span that has an OpenTelemetry context (the application installed
//! a `tracing-opentelemetry` layer), the tasks join the caller's trace, as children of a
//! `rask.publish` span. Outside one, with `otlp_endpoint` set, each submit, map or graph starts a
//! trace of its own (one for a whole persisted graph, so one trace shows it). Otherwise nothing
//! is traced, and publishing costs no more than before (one look at the current span per call,
//! not per task).

use rask_common::trace::TraceContext;
use rask_common::{Settings, TaskMessage};
use tracing::Span;

/// The span and trace context one publishing call (submit, map, graph) stamps its messages with.
pub(crate) struct Publishing {
    /// The `rask.publish` span (`Span::none()` when nothing is traced).
    pub(crate) span: Span,
    /// The context each message carries: the publish span's, as the parent of the workers'.
    pub(crate) context: Option<TraceContext>,
}

impl Publishing {
    /// Starts the publishing of calls of `function` by operation `operation` (`submit`,
    /// `map`, `graph`), in the caller's trace or a new one (see the module docs).
    pub(crate) fn start(settings: &Settings, operation: &'static str, function: &str) -> Self {
        let caller = TraceContext::current();
        if caller.is_none() && settings.otlp_endpoint.is_empty() {
            return Publishing {
                span: Span::none(),
                context: None,
            };
        }
        let span = tracing::info_span!(
            "rask.publish",
            otel.kind = "producer",
            rask.operation = operation,
            rask.function = function,
        );
        // The span's own context when an OpenTelemetry layer sees it (a child of the caller's
        // span, or the root of a new trace); else the caller's (the span is filtered out), else
        // a new trace made here (no layer: the workers' spans are the first exported).
        let context = TraceContext::of_span(&span)
            .or(caller)
            .unwrap_or_else(TraceContext::random_root);
        Publishing {
            span,
            context: Some(context),
        }
    }

    /// `message` in this trace (unchanged when nothing is traced).
    pub(crate) fn stamp(&self, mut message: TaskMessage) -> TaskMessage {
        if self.context.is_some() {
            message.trace.clone_from(&self.context);
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rask_common::TaskKey;

    fn message() -> TaskMessage {
        TaskMessage::new(TaskKey::new("inc-1").unwrap(), "inc", vec![0x90])
    }

    #[test]
    fn nothing_is_traced_without_a_caller_context_or_an_endpoint() {
        let publishing = Publishing::start(&Settings::default(), "submit", "inc");
        assert!(publishing.span.is_none() && publishing.context.is_none());
        assert_eq!(publishing.stamp(message()).trace, None);
    }

    #[test]
    fn with_an_endpoint_each_publishing_starts_its_own_trace() {
        let settings = Settings {
            otlp_endpoint: "http://127.0.0.1:4318".into(),
            ..Settings::default()
        };
        let first = Publishing::start(&settings, "graph", "add");
        let second = Publishing::start(&settings, "graph", "add");
        let (a, b) = (first.stamp(message()), first.stamp(message()));
        assert_eq!(a.trace, b.trace, "one trace for one publishing");
        let c = second.stamp(message());
        assert_ne!(
            a.trace.unwrap().trace_id(),
            c.trace.unwrap().trace_id(),
            "a new trace for the next"
        );
    }
}
