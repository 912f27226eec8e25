//! Trace context: the W3C `traceparent` (and `tracestate`) a task carries from its producer to
//! the worker that runs it, and on to every message published on its behalf (released graph
//! tasks, retries, the calls of a batch, inputs recomputed by lineage), so that one trace shows
//! a whole graph.
//!
//! A [`TraceContext`] travels twice in a task message: in the body's `trace` field (what graph
//! records keep, and what the signature covers) and in the AMQP headers [`TRACEPARENT_HEADER`]
//! and [`TRACESTATE_HEADER`] (the W3C names, for tools that read AMQP headers and producers that
//! do not write the field). A worker uses the body's copy when there is one, else the headers'.
//! A context that does not parse is ignored: it never fails a task. A message without one means
//! what it meant before, and costs nothing more.
//!
//! Spans are `tracing` spans; [`TraceContext::current`] reads the OpenTelemetry context of the
//! caller's span (through `tracing-opentelemetry`) and [`TraceContext::parent`] makes a span a
//! child of a remote one. Without an OpenTelemetry layer in the process both do nothing.

use std::fmt;
use std::sync::Arc;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The AMQP header holding a message's W3C `traceparent`.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The AMQP header holding a message's W3C `tracestate`, when it has one.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// Length of a version-00 `traceparent`: `00-{32 hex}-{16 hex}-{2 hex}`.
const TRACEPARENT_LEN: usize = 55;

/// Longest `tracestate` kept (W3C: 32 entries of at most 256 bytes are allowed, but vendors
/// must propagate at least 512 bytes; longer ones are dropped rather than cut).
const MAX_TRACESTATE: usize = 512;

/// The trace flag bit saying the parent sampled its span.
const SAMPLED: u8 = 0x01;

/// A W3C trace context: the trace a task belongs to, the span it is a child of (its producer's),
/// the trace flags, and the vendors' `tracestate`. One pointer wide (a task message without one
/// grows by 8 bytes) and cheap to clone (shared, as by the calls of a batch).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext(Arc<Ids>);

/// What a [`TraceContext`] holds.
#[derive(PartialEq, Eq, Hash)]
struct Ids {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    state: Option<Box<str>>,
}

impl TraceContext {
    /// A context from its parts, or `None` if either id is all zeros (invalid in W3C).
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Option<Self> {
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext(Arc::new(Ids {
            trace_id,
            span_id,
            flags,
            state: None,
        })))
    }

    /// This context with the `tracestate` `state` (dropped unless valid).
    fn with_state(self, state: Option<&str>) -> Self {
        match state.map(str::trim).filter(|s| valid_state(s)) {
            None => self,
            Some(state) => TraceContext(Arc::new(Ids {
                state: Some(state.into()),
                ..self.ids()
            })),
        }
    }

    /// A copy of the ids (and state).
    fn ids(&self) -> Ids {
        Ids {
            trace_id: self.0.trace_id,
            span_id: self.0.span_id,
            flags: self.0.flags,
            state: self.0.state.clone(),
        }
    }

    /// A new sampled trace with random ids: what a producer starts when its caller is in no
    /// trace.
    pub fn random_root() -> Self {
        TraceContext(Arc::new(Ids {
            // Never all zeros: a version 4 UUID has its version bits set.
            trace_id: uuid::Uuid::new_v4().as_u128().to_be_bytes(),
            span_id: random_span_id(),
            flags: SAMPLED,
            state: None,
        }))
    }

    /// The same trace under a new (random) span: a child of this context, for a producer with
    /// no span of its own to take the id of.
    pub fn child(&self) -> Self {
        TraceContext(Arc::new(Ids {
            span_id: random_span_id(),
            ..self.ids()
        }))
    }

    /// Parses a `traceparent` header (and a `tracestate`), as W3C Trace Context says: version
    /// `00` exactly, later versions by their first four fields; lowercase hex; ids not all
    /// zeros; version `ff` refused. `None` for anything else. A `tracestate` that is empty,
    /// too long or not printable ASCII is dropped (the context is kept).
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let text = traceparent.trim().as_bytes();
        if text.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(&text[0..2])?;
        let well_formed_tail = match version {
            0xff => false,
            0 => text.len() == TRACEPARENT_LEN,
            // A later version may add fields after a dash.
            _ => text.len() == TRACEPARENT_LEN || text[TRACEPARENT_LEN] == b'-',
        };
        if !well_formed_tail || text[2] != b'-' || text[35] != b'-' || text[52] != b'-' {
            return None;
        }
        let mut trace_id = [0; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&text[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0; 8];
        for (i, byte) in span_id.iter_mut().enumerate() {
            *byte = hex_byte(&text[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&text[53..55])?;
        Some(TraceContext::new(trace_id, span_id, flags)?.with_state(tracestate))
    }

    /// The context in `headers` ([`TRACEPARENT_HEADER`], [`TRACESTATE_HEADER`]), if it has a
    /// valid one.
    pub fn from_headers(headers: &FieldTable) -> Option<Self> {
        let text = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
            Some(AMQPValue::ShortString(s)) => Some(s.as_str()),
            _ => None,
        };
        TraceContext::parse(text(TRACEPARENT_HEADER)?, text(TRACESTATE_HEADER))
    }

    /// Adds this context to `headers` ([`TRACEPARENT_HEADER`], and [`TRACESTATE_HEADER`] when
    /// it has a state).
    pub fn insert_into(&self, headers: &mut FieldTable) {
        headers.insert(
            ShortString::from(TRACEPARENT_HEADER),
            AMQPValue::LongString(self.traceparent().as_str().into()),
        );
        if let Some(state) = self.state() {
            headers.insert(
                ShortString::from(TRACESTATE_HEADER),
                AMQPValue::LongString(state.into()),
            );
        }
    }

    /// The `traceparent` text (version `00`), formatted without allocating.
    pub fn traceparent(&self) -> TraceParent {
        let mut text = [b'-'; TRACEPARENT_LEN];
        text[0..2].copy_from_slice(b"00");
        put_hex(&mut text[3..35], &self.0.trace_id);
        put_hex(&mut text[36..52], &self.0.span_id);
        put_hex(&mut text[53..55], &[self.0.flags]);
        TraceParent(text)
    }

    /// The trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.0.trace_id
    }

    /// The id of the parent span (the producer's).
    pub fn span_id(&self) -> [u8; 8] {
        self.0.span_id
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.0.flags
    }

    /// Whether the parent sampled its span (bit 0 of the flags).
    pub fn sampled(&self) -> bool {
        self.0.flags & SAMPLED != 0
    }

    /// The vendors' `tracestate`, if any.
    pub fn state(&self) -> Option<&str> {
        self.0.state.as_deref()
    }

    /// The context of the current `tracing` span, when it has an OpenTelemetry context (the
    /// process has a `tracing-opentelemetry` layer and the caller is in a span of it); `None`
    /// otherwise, at the cost of a lookup.
    pub fn current() -> Option<Self> {
        Self::of_span(&tracing::Span::current())
    }

    /// The OpenTelemetry context of `span`, if it has one (see [`TraceContext::current`]).
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        if span.is_none() {
            return None;
        }
        let context = span.context();
        let span_ref = context.span();
        Self::from_otel(span_ref.span_context())
    }

    /// The context of an OpenTelemetry span, if valid.
    pub fn from_otel(span: &SpanContext) -> Option<Self> {
        if !span.is_valid() {
            return None;
        }
        let context = TraceContext::new(
            span.trace_id().to_bytes(),
            span.span_id().to_bytes(),
            span.trace_flags().to_u8(),
        )?;
        Some(context.with_state(Some(&span.trace_state().header())))
    }

    /// This context as a remote OpenTelemetry parent.
    pub fn to_otel(&self) -> opentelemetry::Context {
        let state = self
            .state()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let span = SpanContext::new(
            TraceId::from_bytes(self.0.trace_id),
            SpanId::from_bytes(self.0.span_id),
            TraceFlags::new(self.0.flags),
            true,
            state,
        );
        opentelemetry::Context::new().with_remote_span_context(span)
    }

    /// Makes `span` a child of this (remote) context, for the OpenTelemetry layer if the
    /// process has one (nothing happens otherwise).
    pub fn parent(&self, span: &tracing::Span) {
        // Fails only when the span is disabled or has started already: it then keeps its own.
        let _ = span.set_parent(self.to_otel());
    }
}

/// A random span id, never all zeros.
fn random_span_id() -> [u8; 8] {
    loop {
        let id = (uuid::Uuid::new_v4().as_u128() as u64).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// The byte of two lowercase hex digits.
fn hex_byte(digits: &[u8]) -> Option<u8> {
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    Some(nibble(digits[0])? << 4 | nibble(digits[1])?)
}

/// Writes `bytes` as lowercase hex into `out` (twice as long).
fn put_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

/// Whether `state` is a `tracestate` worth keeping: not empty, not too long, printable ASCII.
fn valid_state(state: &str) -> bool {
    !state.is_empty()
        && state.len() <= MAX_TRACESTATE
        && state.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// A formatted `traceparent` (55 ASCII bytes), on the stack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceParent([u8; TRACEPARENT_LEN]);

impl TraceParent {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and dashes are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("TraceContext");
        debug.field("traceparent", &self.traceparent().as_str());
        if let Some(state) = self.state() {
            debug.field("tracestate", &state);
        }
        debug.finish()
    }
}

/// In a message body: a map of `traceparent` and, when there is one, `tracestate` (the W3C
/// texts, so that any language reads them).
impl Serialize for TraceContext {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let fields = if self.state().is_some() { 2 } else { 1 };
        let mut map = serializer.serialize_struct("TraceContext", fields)?;
        map.serialize_field(TRACEPARENT_HEADER, self.traceparent().as_str())?;
        if let Some(state) = self.state() {
            map.serialize_field(TRACESTATE_HEADER, state)?;
        }
        map.end()
    }
}

/// A body's `trace` field, read leniently: anything that is not a valid context (another
/// shape, a malformed `traceparent`) reads as `None`, never as an undecodable message.
///
/// # Errors
/// Only those of the underlying format (a truncated body), never for the field's content.
pub fn lenient<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<TraceContext>, D::Error> {
    let value = rmpv::Value::deserialize(deserializer)?;
    let rmpv::Value::Map(entries) = value else {
        return Ok(None);
    };
    let text = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .and_then(|(_, v)| v.as_str())
    };
    Ok(text(TRACEPARENT_HEADER).and_then(|p| TraceContext::parse(p, text(TRACESTATE_HEADER))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_parses_and_formats_back() {
        let context = TraceContext::parse(EXAMPLE, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(context.traceparent().as_str(), EXAMPLE);
        assert_eq!(context.trace_id()[0], 0x4b);
        assert_eq!(context.span_id(), 0x00f0_67aa_0ba9_02b7_u64.to_be_bytes());
        assert!(context.sampled());
        assert_eq!(context.state(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "garbage",
            // Upper case hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // All-zero trace id, all-zero span id.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff, and version 00 with more after it.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // Wrong separators, short ids, non-hex.
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
        // A later version may add fields; its first four are read.
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-next";
        assert_eq!(
            TraceContext::parse(later, None)
                .unwrap()
                .traceparent()
                .as_str(),
            EXAMPLE
        );
        // A bad state is dropped, the context kept.
        let context = TraceContext::parse(EXAMPLE, Some("a=\u{7}")).unwrap();
        assert_eq!(context.state(), None);
    }

    #[test]
    fn headers_round_trip_and_bad_headers_read_as_none() {
        let context = TraceContext::parse(EXAMPLE, Some("rojo=00f067aa0ba902b7")).unwrap();
        let mut headers = FieldTable::default();
        context.insert_into(&mut headers);
        assert_eq!(TraceContext::from_headers(&headers), Some(context));
        assert_eq!(TraceContext::from_headers(&FieldTable::default()), None);
        let mut bad = FieldTable::default();
        bad.insert(
            ShortString::from(TRACEPARENT_HEADER),
            AMQPValue::LongLongInt(7),
        );
        assert_eq!(TraceContext::from_headers(&bad), None);
    }

    #[test]
    fn children_keep_the_trace_and_roots_differ() {
        let root = TraceContext::random_root();
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.span_id(), root.span_id());
        assert_ne!(TraceContext::random_root().trace_id(), root.trace_id());
        assert!(root.sampled());
    }

    #[test]
    fn open_telemetry_contexts_convert_both_ways() {
        let context = TraceContext::parse(EXAMPLE, Some("congo=t61rcWkgMzE")).unwrap();
        let otel = context.to_otel();
        let span = otel.span();
        assert!(span.span_context().is_remote());
        assert_eq!(TraceContext::from_otel(span.span_context()), Some(context));
        // No OpenTelemetry layer in this process: no current context, and parenting is a no-op.
        assert_eq!(TraceContext::current(), None);
        TraceContext::random_root().parent(&tracing::Span::none());
    }
}
