//! The task message: what a producer publishes to RabbitMQ and a worker decodes, once, at the edge.
//!
//! A message body is a MessagePack map (field names included, so that fields can be added later
//! without breaking older readers, which ignore fields they do not know).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::TaskKey;
use crate::pool::Pool;
use crate::resources::Resources;
pub use crate::retry::RetryPolicy;

/// The protocol version this build writes and accepts.
pub const PROTOCOL_VERSION: u16 = 1;

/// AMQP header set on dead-lettered messages: why rask could not process it.
pub const REASON_HEADER: &str = "x-rask-reason";

/// One task to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    /// Protocol version of this message ([`PROTOCOL_VERSION`] when written by this build).
    pub version: u16,
    /// The task's key; its result is stored under it.
    pub key: TaskKey,
    /// Name of the registered function to run.
    pub function: String,
    /// The function's arguments as one MessagePack value: a tuple, i.e. an array (nil or an
    /// empty array for a function without parameters).
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// Keys of the tasks whose results this one takes (task graphs): `args` holds a placeholder
    /// ([`crate::graph::DEPENDENCY_EXT`]) where each goes. Empty, and then not written, for
    /// plain tasks, so older readers and writers are unaffected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<TaskKey>,
    /// Attempts already made at this task: 0 when a producer publishes it, one more each time a
    /// worker schedules a retry ([`RetryPolicy`]). Not written when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// How to retry the task when it fails with a retryable error; `None` (not written): never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Longest the task may run, in milliseconds, before it fails with `TimedOut`; `None` (not
    /// written): the worker's `task_time_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_ms: Option<u64>,
    /// AMQP priority (0 = lowest, the default; at most the `max_priority` setting). Kept in the
    /// body too, so that a retry is republished with it. Not written when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
    /// The pool whose queues the task goes to ([`crate::pool`]), so that a retry, a dead
    /// letter requeued or a graph task released by a worker of another pool goes back to it.
    /// `None` (not written): the default pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Pool>,
    /// What the task needs of a worker's resources (`gpu=1`): a worker runs it only while it
    /// has that much free ([`crate::resources`]). Empty, and then not written, for a task that
    /// needs nothing: older messages mean that.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Times workers that lack the task's resources handed it on for another worker of its
    /// queue to run (each after a longer pause). Not written when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub handoffs: u32,
    /// Times a worker sent the task back through the delay ladder because of its function's
    /// global limits ([`crate::limits`]): over the rate, or no concurrency lease free. Such a
    /// return is a new message, not a failed delivery. Not written when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deferrals: u32,
    /// Whether the task already took its token of its function's rate limit (it was sent back
    /// to wait until that token was due), so that it is not charged again. Cleared on a retry.
    /// Not written when false.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rate_token: bool,
    /// The same for its pool's rate limit (a limit on `pool:{pool}`). Not written when false.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pool_rate_token: bool,
    /// Where the arguments are when they are too large to travel in the message (longer than
    /// the `inline_limit` setting): `args` is then empty, and the worker reads them from there
    /// before running the task ([`crate::reference`]). `None` (not written): they are in `args`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_ref: Option<crate::reference::Reference>,
    /// The calls of a batch message ([`crate::batch`]): many small calls of `function` in one
    /// message, each with its own key and arguments; the message's own `key` then names the
    /// batch and `args` is empty. Empty, and then not written, for a message of one task: older
    /// messages mean that.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<Call>,
    /// A hedge copy ([`crate::hedge`]): published again by the client because the task ran
    /// late. A worker reads whether the task has an outcome before running it (the other copy
    /// may have stored one) and does not run it if so. Not written when false: older messages
    /// and older workers mean an ordinary delivery.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hedge: bool,
    /// The W3C trace context the task runs in ([`crate::trace`]): its producer's span, which
    /// the worker's span of each run is a child of. Kept as it is by everything published on
    /// the task's behalf (its retries, the calls of its batch; its graph record, so that its
    /// release carries it), and sent in the AMQP headers too. `None` (not written): no trace,
    /// as before; a malformed one reads as `None`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::trace::lenient"
    )]
    pub trace: Option<crate::trace::TraceContext>,
    /// The client to send the task's outcome to as soon as it is stored ([`crate::reply`]):
    /// set by `call`, whose client waits for it. `None` (not written): the outcome is only
    /// announced, as before; a malformed one reads as `None`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::reply::lenient"
    )]
    pub reply: Option<crate::reply::ReplyTo>,
}

/// One call of a batch message: its own key (its outcome is stored under it) and arguments; the
/// rest (function, retry policy, time limit, priority, pool) is the batch message's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// The call's key.
    pub key: TaskKey,
    /// Its arguments, encoded as for [`TaskMessage::args`].
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

impl TaskMessage {
    /// A message for `function` with already encoded `args`.
    pub fn new(key: TaskKey, function: impl Into<String>, args: Vec<u8>) -> Self {
        TaskMessage {
            version: PROTOCOL_VERSION,
            key,
            function: function.into(),
            args,
            deps: Vec::new(),
            attempt: 0,
            retry: None,
            time_limit_ms: None,
            priority: 0,
            pool: None,
            resources: Resources::new(),
            handoffs: 0,
            deferrals: 0,
            rate_token: false,
            pool_rate_token: false,
            args_ref: None,
            calls: Vec::new(),
            hedge: false,
            trace: None,
            reply: None,
        }
    }

    /// A batch message of `calls` of `function` under the batch key `key` ([`crate::batch`]).
    pub fn batch(key: TaskKey, function: impl Into<String>, calls: Vec<Call>) -> Self {
        TaskMessage {
            calls,
            ..TaskMessage::new(key, function, Vec::new())
        }
    }

    /// Whether this is a batch message (it has calls).
    pub fn is_batch(&self) -> bool {
        !self.calls.is_empty()
    }

    /// Splits a batch message into its calls and the template each call's message is made
    /// from ([`TaskMessage::for_call`]): the batch without its calls, arguments and deps.
    pub fn into_calls(mut self) -> (TaskMessage, Vec<Call>) {
        let calls = std::mem::take(&mut self.calls);
        self.args = Vec::new();
        self.deps = Vec::new();
        (self, calls)
    }

    /// The message of one call of a batch, from the batch's template
    /// ([`TaskMessage::into_calls`]): the call's key and arguments with the batch's function and
    /// scheduling fields: what runs, is retried and is reported as the call.
    pub fn for_call(&self, call: Call) -> TaskMessage {
        TaskMessage {
            key: call.key,
            args: call.args,
            ..self.clone()
        }
    }

    /// The same message, waiting for the results of `deps`.
    pub fn with_deps(mut self, deps: Vec<TaskKey>) -> Self {
        self.deps = deps;
        self
    }

    /// The message body.
    ///
    /// # Errors
    /// [`Error::Encode`] (cannot happen for well-formed messages; kept for honesty).
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    /// Decodes a body, or explains why it is not a task message, with as much of it as could
    /// still be read (the key, so that the failure can be reported on the task's future).
    ///
    /// # Errors
    /// [`Undecodable`] with the reason.
    pub fn decode(body: &[u8]) -> std::result::Result<Self, Undecodable> {
        let probe: Probe = match rmp_serde::from_slice(body) {
            Ok(probe) => probe,
            Err(e) => {
                return Err(Undecodable {
                    key: None,
                    function: None,
                    reason: format!("not a rask task message: {e}"),
                })
            }
        };
        let key = probe.key.and_then(|k| TaskKey::new(k).ok());
        let fail = |reason: String| Undecodable {
            key: key.clone(),
            function: probe.function.clone(),
            reason,
        };
        match probe.version {
            Some(PROTOCOL_VERSION) => {}
            Some(found) => {
                return Err(fail(
                    Error::Version {
                        found,
                        supported: PROTOCOL_VERSION,
                    }
                    .to_string(),
                ))
            }
            None => return Err(fail("message has no protocol version".into())),
        }
        rmp_serde::from_slice(body).map_err(|e| fail(format!("malformed task message: {e}")))
    }
}

/// The key and function of a message body where present and valid, read without decoding the
/// arguments (for a body too large to run, say).
pub fn head(body: &[u8]) -> (Option<TaskKey>, Option<String>) {
    match rmp_serde::from_slice::<Probe>(body) {
        Ok(probe) => (probe.key.and_then(|k| TaskKey::new(k).ok()), probe.function),
        Err(_) => (None, None),
    }
}

/// Why a message body is not a task message, with whatever could be read of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Undecodable {
    /// The task key, if the message had a valid one.
    pub key: Option<TaskKey>,
    /// The function name, if the message had one.
    pub function: Option<String>,
    /// What is wrong with it.
    pub reason: String,
}

/// The fields read from a message that may be malformed otherwise.
#[derive(Deserialize)]
#[serde(rename = "TaskMessage")]
struct Probe {
    #[serde(default)]
    version: Option<u16>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    function: Option<String>,
}

/// Encodes a value (task arguments or a result) as MessagePack.
///
/// # Errors
/// [`Error::Encode`] if serde refuses the value.
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    Ok(rmp_serde::to_vec(value)?)
}

/// Decodes a MessagePack value (task arguments or a result).
///
/// # Errors
/// [`Error::Decode`] if the bytes are not a `T`.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    Ok(rmp_serde::from_slice(bytes)?)
}

/// The deepest nesting of lists and maps that task arguments may have: 128 levels, as serde_json
/// allows by default.
///
/// Decoding, encoding, comparing and dropping a value each recurse once per level, on the
/// thread that runs the task (2 MiB of stack under tokio); MessagePack's own limit of 1,024
/// levels overflows that in a debug build, and a stack overflow aborts the whole worker.
pub const MAX_ARGS_DEPTH: usize = 128;

/// Decodes task arguments, as [`decode_value`] does but refusing values nested deeper than
/// [`MAX_ARGS_DEPTH`]: what workers decode the arguments of every function with.
///
/// # Errors
/// [`Error::Decode`] if the bytes are not a `T` or are nested too deeply.
pub fn decode_args<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let mut decoder = rmp_serde::Deserializer::from_read_ref(bytes);
    decoder.set_max_depth(MAX_ARGS_DEPTH);
    Ok(T::deserialize(&mut decoder)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> TaskMessage {
        TaskMessage::new(
            TaskKey::new("inc-1").unwrap(),
            "inc",
            encode_value(&(41,)).unwrap(),
        )
    }

    #[test]
    fn round_trips() {
        let m = message();
        assert_eq!(TaskMessage::decode(&m.encode().unwrap()).unwrap(), m);
    }

    #[test]
    fn deps_round_trip_and_are_omitted_when_empty() {
        let plain = message().encode().unwrap();
        assert!(!plain.windows(4).any(|w| w == b"deps"));
        let m = message().with_deps(vec![TaskKey::new("inc-2").unwrap()]);
        assert_eq!(TaskMessage::decode(&m.encode().unwrap()).unwrap(), m);
    }

    #[test]
    fn scheduling_fields_round_trip_and_are_omitted_when_default() {
        let plain = message().encode().unwrap();
        for field in [
            "attempt",
            "retry",
            "time_limit_ms",
            "priority",
            "pool",
            "resources",
            "handoffs",
            "deferrals",
            "rate_token",
            "pool_rate_token",
            "args_ref",
            "trace",
        ] {
            assert!(
                !plain.windows(field.len()).any(|w| w == field.as_bytes()),
                "{field}"
            );
        }
        let mut m = message();
        m.attempt = 2;
        m.retry = Some(RetryPolicy::new(5));
        m.time_limit_ms = Some(1500);
        m.priority = 7;
        m.pool = Some(Pool::new("gpu").unwrap());
        m.resources = "gpu=1,mem=2GiB".parse().unwrap();
        m.handoffs = 3;
        m.deferrals = 2;
        m.rate_token = true;
        m.pool_rate_token = true;
        m.args_ref = Some(crate::reference::Reference::to(
            b"large",
            crate::reference::Location::Store,
        ));
        m.trace = crate::trace::TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("congo=t61rcWkgMzE"),
        );
        assert!(m.trace.is_some());
        assert_eq!(TaskMessage::decode(&m.encode().unwrap()).unwrap(), m);
    }

    #[test]
    fn garbage_is_undecodable_without_key() {
        let err = TaskMessage::decode(b"\xc1\xff garbage").unwrap_err();
        assert_eq!(err.key, None);
        assert!(
            err.reason.contains("not a rask task message"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn wrong_version_keeps_the_key() {
        let mut m = message();
        m.version = 99;
        let err = TaskMessage::decode(&m.encode().unwrap()).unwrap_err();
        assert_eq!(err.key, Some(m.key));
        assert!(err.reason.contains("99"), "{}", err.reason);
    }

    #[test]
    fn truncated_message_is_undecodable() {
        let body = message().encode().unwrap();
        assert!(TaskMessage::decode(&body[..body.len() - 3]).is_err());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        #[derive(Serialize)]
        struct Newer<'a> {
            version: u16,
            key: &'a str,
            function: &'a str,
            #[serde(with = "serde_bytes")]
            args: &'a [u8],
            deadline: u64,
        }
        let args = encode_value(&(1,)).unwrap();
        let body = rmp_serde::to_vec_named(&Newer {
            version: PROTOCOL_VERSION,
            key: "k",
            function: "inc",
            args: &args,
            deadline: 7,
        })
        .unwrap();
        assert_eq!(TaskMessage::decode(&body).unwrap().function, "inc");
    }

    #[test]
    fn batches_round_trip_and_plain_messages_do_not_write_calls() {
        assert!(!message()
            .encode()
            .unwrap()
            .windows(5)
            .any(|w| w == b"calls"));
        let call = |k: &str, n: i64| Call {
            key: TaskKey::new(k).unwrap(),
            args: encode_value(&(n,)).unwrap(),
        };
        let mut batch = TaskMessage::batch(
            TaskKey::new("inc.batch-1").unwrap(),
            "inc",
            vec![call("inc-1", 1), call("inc-2", 2)],
        );
        batch.retry = Some(RetryPolicy::new(3));
        assert!(batch.is_batch() && !message().is_batch());
        assert_eq!(
            TaskMessage::decode(&batch.encode().unwrap()).unwrap(),
            batch
        );
        let (template, calls) = batch.into_calls();
        let second = template.for_call(calls[1].clone());
        assert_eq!(second.key.as_str(), "inc-2");
        assert_eq!(second.args, calls[1].args);
        assert_eq!(second.retry, Some(RetryPolicy::new(3)));
        assert!(!second.is_batch());
    }

    #[test]
    fn a_malformed_trace_context_reads_as_none_and_never_fails_the_message() {
        #[derive(Serialize)]
        struct Traced<'a, T> {
            version: u16,
            key: &'a str,
            function: &'a str,
            #[serde(with = "serde_bytes")]
            args: &'a [u8],
            trace: T,
        }
        let args = encode_value(&(1,)).unwrap();
        let with = |trace: rmpv::Value| {
            let body = rmp_serde::to_vec_named(&Traced {
                version: PROTOCOL_VERSION,
                key: "k",
                function: "inc",
                args: &args,
                trace,
            })
            .unwrap();
            TaskMessage::decode(&body).unwrap().trace
        };
        let map = |parent: &str| {
            rmpv::Value::Map(vec![(
                rmpv::Value::from("traceparent"),
                rmpv::Value::from(parent),
            )])
        };
        assert_eq!(with(rmpv::Value::from(7)), None);
        assert_eq!(with(map("00-zz-nonsense")), None);
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            with(map(good)).map(|t| t.traceparent().to_string()),
            Some(good.to_owned())
        );
    }

    #[test]
    fn arguments_nested_beyond_the_limit_are_refused() {
        let nested = |depth: usize| {
            let mut bytes = vec![0x91; depth];
            bytes.push(0xc0);
            bytes
        };
        assert!(decode_args::<rmpv::Value>(&nested(MAX_ARGS_DEPTH - 1)).is_ok());
        let error = decode_args::<rmpv::Value>(&nested(MAX_ARGS_DEPTH + 1)).unwrap_err();
        assert!(error.to_string().contains("depth"), "{error}");
        assert!(decode_value::<rmpv::Value>(&nested(MAX_ARGS_DEPTH + 1)).is_ok());
    }
}
