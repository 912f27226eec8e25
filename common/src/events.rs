//! Task states and the event stream: what happened to each task, recorded cheaply.
//!
//! Two records, written by producers and workers in the same batches as the Redis writes they
//! make anyway (never a round trip of their own per task), when the `events` setting is on:
//!
//! - the **state record** of a task, a hash at [`Keys::state`] whose fields are merged by each
//!   writer (`HSET`), and which expires with the result (`PEXPIRE` with `result_ttl` on each
//!   write). Its fields: `function`; `queued_at` and `queued_by` (the producer); `started_at`,
//!   `worker`, `slot`, `attempt`; `finished_at`, `outcome` (an [`EventKind`]), `duration_ms`,
//!   `error`; `retries` and `retried_at`; `dead_lettered_at`. Times are Unix milliseconds.
//! - the deployment's **event stream**, a Redis Stream at [`Keys::events`] capped at about
//!   `events_max_len` entries (`XADD MAXLEN ~`), one entry per [`Event`] with the fields of
//!   [`Event::fields`].
//!
//! [`task_info`] reads a task's [`TaskInfo`]: its [`TaskState`] comes first from its stored
//! result (the truth), then from its graph inputs still pending, then from the state record.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::keys::{Keys, TaskKey};
use crate::outcome::{FailureKind, Outcome};
use crate::store::Store;

/// Longest error text kept in a record or event (the stored result keeps the whole message).
const MAX_ERROR_CHARS: usize = 500;

/// What happened to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A producer published it.
    Queued,
    /// A worker started running it (recorded only for runs that last longer than a worker's
    /// flush interval; a finished event carries the start of every run).
    Started,
    /// It returned a value.
    Succeeded,
    /// It ended with a failure (stored as its outcome).
    Failed,
    /// An attempt failed and the task was sent back to run again later.
    Retried,
    /// It was cancelled (its stored outcome is a `Cancelled` failure).
    Cancelled,
    /// Its message went to the dead-letter queue.
    DeadLettered,
}

impl EventKind {
    /// The name used in records, streams and JSON (`queued`, `dead_lettered`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Started => "started",
            EventKind::Succeeded => "succeeded",
            EventKind::Failed => "failed",
            EventKind::Retried => "retried",
            EventKind::Cancelled => "cancelled",
            EventKind::DeadLettered => "dead_lettered",
        }
    }

    /// The kind named `name` (as [`EventKind::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "queued" => EventKind::Queued,
            "started" => EventKind::Started,
            "succeeded" => EventKind::Succeeded,
            "failed" => EventKind::Failed,
            "retried" => EventKind::Retried,
            "cancelled" => EventKind::Cancelled,
            "dead_lettered" => EventKind::DeadLettered,
            _ => return None,
        })
    }

    /// Whether the task ended (it has an outcome).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            EventKind::Succeeded | EventKind::Failed | EventKind::Cancelled
        )
    }

    /// The kind of a finished outcome.
    pub fn of_outcome(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Value(_) => EventKind::Succeeded,
            Outcome::Failure(f) if f.kind == FailureKind::Cancelled => EventKind::Cancelled,
            Outcome::Failure(_) => EventKind::Failed,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing that happened to a task: a state record update and an event stream entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The entry's id in the stream (`1733460000000-0`); empty before it is written.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// What happened.
    pub kind: EventKind,
    /// The task.
    pub key: TaskKey,
    /// Its function.
    pub function: String,
    /// When (Unix ms).
    pub at: u64,
    /// Who published it (queued: `host:pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The worker that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The worker's concurrency slot it ran in (`0..concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// Its attempt (`0` for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When the run started (Unix ms), on events that end a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    /// How long the run took, in ms, on events that end a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The failure's message (shortened), on failed, retried and dead-lettered events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    /// An event of `kind` for task `key` of `function`, now, with no other field.
    pub fn new(kind: EventKind, key: TaskKey, function: impl Into<String>) -> Self {
        Event {
            id: String::new(),
            kind,
            key,
            function: function.into(),
            at: now_ms(),
            by: None,
            worker: None,
            slot: None,
            attempt: None,
            started: None,
            duration_ms: None,
            error: None,
        }
    }

    /// This event with `error` (shortened to [`MAX_ERROR_CHARS`]).
    pub fn with_error(mut self, error: &str) -> Self {
        self.error = Some(shorten(error));
        self
    }

    /// The stream entry's fields, in order: `kind`, `key`, `function`, `at`, then those of
    /// `by`, `worker`, `slot`, `attempt`, `started`, `duration_ms`, `error` that are set.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("kind", self.kind.as_str().to_owned()),
            ("key", self.key.as_str().to_owned()),
            ("function", self.function.clone()),
            ("at", self.at.to_string()),
        ];
        let optional = [
            ("by", self.by.clone()),
            ("worker", self.worker.clone()),
            ("slot", self.slot.map(|s| s.to_string())),
            ("attempt", self.attempt.map(|a| a.to_string())),
            ("started", self.started.map(|s| s.to_string())),
            ("duration_ms", self.duration_ms.map(|d| d.to_string())),
            ("error", self.error.clone()),
        ];
        fields.extend(optional.into_iter().filter_map(|(n, v)| v.map(|v| (n, v))));
        fields
    }

    /// The event of stream entry `id` with `fields`; `None` if a required field is missing
    /// or bad (an entry written by hand, say).
    pub fn from_fields(id: String, fields: &HashMap<String, String>) -> Option<Self> {
        let num = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
        Some(Event {
            id,
            kind: EventKind::parse(fields.get("kind")?)?,
            key: TaskKey::new(fields.get("key")?.clone()).ok()?,
            function: fields.get("function")?.clone(),
            at: num("at")?,
            by: fields.get("by").cloned(),
            worker: fields.get("worker").cloned(),
            slot: num("slot").and_then(|s| u32::try_from(s).ok()),
            attempt: num("attempt").and_then(|s| u32::try_from(s).ok()),
            started: num("started"),
            duration_ms: num("duration_ms"),
            error: fields.get("error").cloned(),
        })
    }

    /// The state record fields this event sets (see the module docs).
    fn state_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![("function", self.function.clone())];
        let at = self.at.to_string();
        let run = |fields: &mut Vec<(&'static str, String)>| {
            if let Some(started) = self.started {
                fields.push(("started_at", started.to_string()));
            }
            if let Some(worker) = &self.worker {
                fields.push(("worker", worker.clone()));
            }
            if let Some(slot) = self.slot {
                fields.push(("slot", slot.to_string()));
            }
            if let Some(attempt) = self.attempt {
                fields.push(("attempt", attempt.to_string()));
            }
        };
        match self.kind {
            EventKind::Queued => {
                fields.push(("queued_at", at));
                if let Some(by) = &self.by {
                    fields.push(("queued_by", by.clone()));
                }
            }
            EventKind::Started => {
                run(&mut fields);
                fields.push(("started_at", at));
            }
            EventKind::Succeeded | EventKind::Failed | EventKind::Cancelled => {
                run(&mut fields);
                fields.push(("finished_at", at));
                fields.push(("outcome", self.kind.as_str().to_owned()));
                if let Some(d) = self.duration_ms {
                    fields.push(("duration_ms", d.to_string()));
                }
            }
            EventKind::Retried => {
                run(&mut fields);
                fields.push(("retried_at", at));
            }
            EventKind::DeadLettered => fields.push(("dead_lettered_at", at)),
        }
        if let Some(error) = &self.error {
            fields.push(("error", error.clone()));
        }
        fields
    }
}

/// Writes events: adds each one's state record update and stream entry to a pipeline.
#[derive(Debug, Clone)]
pub struct Recorder {
    keys: Keys,
    ttl_ms: u64,
    max_len: u64,
    enabled: bool,
}

impl Recorder {
    /// A recorder for the deployment of `store`, as `settings` say (`events`,
    /// `events_max_len`, `result_ttl`).
    pub fn new(store: &Store, settings: &crate::Settings) -> Self {
        Recorder {
            keys: store.keys().clone(),
            ttl_ms: store.ttl_ms(),
            max_len: settings.events_max_len,
            enabled: settings.events,
        }
    }

    /// Whether events are recorded (the `events` setting).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Adds `event` to `pipe`: its state record fields (`HSET`, then `PEXPIRE` with the
    /// result TTL) and its stream entry (`XADD MAXLEN ~`), replies ignored. Nothing when
    /// events are off.
    pub fn add(&self, pipe: &mut redis::Pipeline, event: &Event) {
        if !self.enabled {
            return;
        }
        let state = self.keys.state(&event.key);
        let hset = pipe.cmd("HSET").arg(&state);
        for (name, value) in event.state_fields() {
            hset.arg(name).arg(value);
        }
        hset.ignore();
        if event.kind == EventKind::Retried {
            pipe.cmd("HINCRBY")
                .arg(&state)
                .arg("retries")
                .arg(1)
                .ignore();
        }
        pipe.cmd("PEXPIRE").arg(&state).arg(self.ttl_ms).ignore();
        let xadd = pipe
            .cmd("XADD")
            .arg(self.keys.events())
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_len)
            .arg("*");
        for (name, value) in event.fields() {
            xadd.arg(name).arg(value);
        }
        xadd.ignore();
    }

    /// Writes `events` in one pipeline (nothing when there are none or events are off).
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn write(&self, store: &Store, events: &[Event]) -> Result<()> {
        if !self.enabled || events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for event in events {
            self.add(&mut pipe, event);
        }
        pipe.query_async::<()>(&mut store.connection()).await?;
        Ok(())
    }
}

/// Where a task is, as `rask inspect` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskState {
    /// Published, not running (also between retries).
    Queued,
    /// A graph task whose inputs are not all stored ([`TaskInfo::waiting_for`]).
    Waiting,
    /// A worker runs it.
    Running,
    /// Its value is stored.
    Succeeded,
    /// Its failure is stored (or its message was dead-lettered).
    Failed,
    /// It was cancelled.
    Cancelled,
    /// Nothing is known of it: never submitted, expired, released, or recorded with events off.
    Unknown,
}

impl TaskState {
    /// The name printed and in JSON (`queued`, `waiting`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Waiting => "waiting",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything known of one task (`client.task_info`, `rask inspect`). Times are Unix ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// The task.
    pub key: TaskKey,
    /// Where it is.
    pub state: TaskState,
    /// Its function, if known.
    pub function: Option<String>,
    /// When it was published.
    pub queued_at: Option<u64>,
    /// Who published it (`host:pid`).
    pub queued_by: Option<String>,
    /// When its last run started.
    pub started_at: Option<u64>,
    /// The worker of its last run.
    pub worker: Option<String>,
    /// The worker's concurrency slot of its last run.
    pub slot: Option<u32>,
    /// The attempt of its last run (`0` for the first).
    pub attempt: Option<u32>,
    /// When it finished.
    pub finished_at: Option<u64>,
    /// How long its last run took, in ms.
    pub duration_ms: Option<u64>,
    /// Attempts that failed and were retried.
    pub retries: u32,
    /// The class of its stored failure.
    pub failure: Option<FailureKind>,
    /// Its failure's message (or the last retried attempt's).
    pub error: Option<String>,
    /// When its message was dead-lettered.
    pub dead_lettered_at: Option<u64>,
    /// The graph inputs it still waits for (state `waiting`).
    pub waiting_for: Vec<TaskKey>,
}

impl TaskInfo {
    /// The info of `key` from its stored outcome, pending inputs and state record fields.
    fn derive(
        key: TaskKey,
        outcome: Option<&[u8]>,
        mut waiting_for: Vec<TaskKey>,
        record: &HashMap<String, String>,
    ) -> Self {
        let num = |name: &str| record.get(name).and_then(|v| v.parse::<u64>().ok());
        let small = |name: &str| num(name).and_then(|v| u32::try_from(v).ok());
        let mut info = TaskInfo {
            key,
            state: TaskState::Unknown,
            function: record.get("function").cloned(),
            queued_at: num("queued_at"),
            queued_by: record.get("queued_by").cloned(),
            started_at: num("started_at"),
            worker: record.get("worker").cloned(),
            slot: small("slot"),
            attempt: small("attempt"),
            finished_at: num("finished_at"),
            duration_ms: num("duration_ms"),
            retries: small("retries").unwrap_or(0),
            failure: None,
            error: record.get("error").cloned(),
            dead_lettered_at: num("dead_lettered_at"),
            waiting_for: Vec::new(),
        };
        let retried_at = num("retried_at");
        info.state = match outcome.map(Outcome::decode) {
            Some(Ok(Outcome::Value(_))) => TaskState::Succeeded,
            Some(Ok(Outcome::Failure(f))) => {
                info.function.get_or_insert(f.task);
                info.worker.get_or_insert(f.worker);
                info.error = Some(f.message);
                info.failure = Some(f.kind);
                match f.kind {
                    FailureKind::Cancelled => TaskState::Cancelled,
                    _ => TaskState::Failed,
                }
            }
            Some(Err(_)) => TaskState::Failed,
            None if !waiting_for.is_empty() => {
                waiting_for.sort();
                info.waiting_for = waiting_for;
                TaskState::Waiting
            }
            None if info.dead_lettered_at.is_some() => TaskState::Failed,
            None => match (info.started_at, retried_at, info.queued_at) {
                (Some(started), retried, _) if retried.is_none_or(|r| started > r) => {
                    TaskState::Running
                }
                (_, Some(_), _) | (_, _, Some(_)) => TaskState::Queued,
                _ => TaskState::Unknown,
            },
        };
        info
    }
}

/// Reads the [`TaskInfo`] of each of `keys`, in order: one pipeline per task (its result, its
/// pending inputs and its state record live in one slot of a Redis Cluster), all at once.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn task_info(store: &Store, keys: &[TaskKey]) -> Result<Vec<TaskInfo>> {
    let reads = keys.iter().map(|key| async move {
        let k = store.keys();
        let (outcome, pending, record): (Option<Vec<u8>>, Vec<String>, HashMap<String, String>) =
            redis::pipe()
                .cmd("GET")
                .arg(k.result(key))
                .cmd("SMEMBERS")
                .arg(k.pending(key))
                .cmd("HGETALL")
                .arg(k.state(key))
                .query_async(&mut store.connection())
                .await?;
        let pending = pending
            .into_iter()
            .filter_map(|p| TaskKey::new(p).ok())
            .collect();
        Ok(TaskInfo::derive(
            key.clone(),
            outcome.as_deref(),
            pending,
            &record,
        ))
    });
    futures::future::try_join_all(reads).await
}

/// Reads up to `count` events of the stream after entry `after` (exclusive; `None`: from the
/// start, or from `since` ago when given), oldest first.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn read_events(
    store: &Store,
    after: Option<&str>,
    since: Option<Duration>,
    count: usize,
) -> Result<Vec<Event>> {
    let start = match (after, since) {
        (Some(id), _) => format!("({id}"),
        (None, Some(since)) => {
            let since = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
            now_ms().saturating_sub(since).to_string()
        }
        (None, None) => "-".to_owned(),
    };
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(store.keys().events())
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(&mut store.connection())
        .await?;
    Ok(entries
        .into_iter()
        .filter_map(|(id, fields)| Event::from_fields(id, &fields))
        .collect())
}

/// The time now in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `text` cut to at most [`MAX_ERROR_CHARS`] characters.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::TaskFailure;

    fn key(k: &str) -> TaskKey {
        TaskKey::new(k).unwrap()
    }

    fn record(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn stream_fields_round_trip() {
        let mut event = Event::new(EventKind::Failed, key("f-1"), "f").with_error("boom");
        event.worker = Some("w-1".into());
        event.slot = Some(3);
        event.attempt = Some(1);
        event.started = Some(10);
        event.duration_ms = Some(5);
        let fields: HashMap<String, String> = event
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let back = Event::from_fields("1-0".into(), &fields).unwrap();
        assert_eq!(back.id, "1-0");
        assert_eq!(
            Event {
                id: String::new(),
                ..back
            },
            event
        );
        assert!(Event::from_fields("1-0".into(), &record(&[("kind", "nope")])).is_none());
    }

    #[test]
    fn errors_are_shortened() {
        let long = "é".repeat(MAX_ERROR_CHARS + 10);
        let event = Event::new(EventKind::Failed, key("f-1"), "f").with_error(&long);
        assert_eq!(event.error.unwrap().chars().count(), MAX_ERROR_CHARS + 1);
    }

    #[test]
    fn state_comes_from_the_result_first() {
        let running = record(&[("started_at", "5"), ("queued_at", "1")]);
        let value = Outcome::Value(vec![1]).encode().unwrap();
        let info = TaskInfo::derive(key("t-1"), Some(&value), vec![], &running);
        assert_eq!(info.state, TaskState::Succeeded);
        let failure = TaskFailure::new(FailureKind::Cancelled, "stop", "t", key("t-1"), "w");
        let cancelled = Outcome::Failure(failure).encode().unwrap();
        let info = TaskInfo::derive(key("t-1"), Some(&cancelled), vec![], &running);
        assert_eq!(info.state, TaskState::Cancelled);
        assert_eq!(info.error.as_deref(), Some("stop"));
        assert_eq!(info.failure, Some(FailureKind::Cancelled));
    }

    #[test]
    fn state_without_a_result() {
        let derive = |pending: Vec<TaskKey>, r: &[(&str, &str)]| {
            TaskInfo::derive(key("t-1"), None, pending, &record(r)).state
        };
        assert_eq!(derive(vec![key("a-1")], &[]), TaskState::Waiting);
        assert_eq!(derive(vec![], &[("queued_at", "1")]), TaskState::Queued);
        assert_eq!(
            derive(vec![], &[("queued_at", "1"), ("started_at", "2")]),
            TaskState::Running
        );
        // Retried after its last start: queued again.
        assert_eq!(
            derive(vec![], &[("started_at", "2"), ("retried_at", "3")]),
            TaskState::Queued
        );
        assert_eq!(
            derive(vec![], &[("retried_at", "3"), ("started_at", "4")]),
            TaskState::Running
        );
        assert_eq!(
            derive(vec![], &[("dead_lettered_at", "4")]),
            TaskState::Failed
        );
        assert_eq!(derive(vec![], &[]), TaskState::Unknown);
    }
}
