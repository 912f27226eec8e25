//! Task states and the event stream: what happened to each task, recorded cheaply.
//!
//! Written by producers and workers when the `events` setting is on, a batch of [`Event`]s at a
//! time (a worker's batch of results, a producer's flush), in a few commands per batch, never
//! a round trip of its own per task:
//!
//! - the **records** of tasks, in hashes per time bucket (of `result_ttl / 24`, at least a
//!   minute), so that one `HSET` writes a whole batch and the records expire with the results
//!   (each bucket at its end plus `result_ttl`, `PEXPIREAT`): the `queued` events at
//!   [`Keys::queued`] (task key -> event, written by producers) and the last event of each task
//!   on a worker at [`Keys::states`] (`started`, `succeeded`, `failed`, `retried`,
//!   `cancelled`, `dead_lettered`; a newer one replaces the one before). Each value is the
//!   event in the compact encoding of `event_codec.rs` (a positional MessagePack array).
//! - the deployment's **event stream**, a Redis Stream at [`Keys::events`] capped at about
//!   `events_max_len` entries (`XADD MAXLEN ~`): one entry per batch, with the fields `n` (how
//!   many events) and `v2` (the batch in the compact encoding: who wrote it and its functions
//!   once, then each event).
//!
//! The calls of a batch message whose keys are of one group ([`crate::call_keys`]) are
//! recorded together ([`crate::batch_events`]): one record per batch under its group (queued
//! by the client, started and ended by the worker) and one stream item, which readers expand
//! into each call's events. A call's records are then its own (a retry of it runs alone) and
//! its batch's: the newer counts.
//!
//! Readers also take records and entries of the first encoding (MessagePack maps with the
//! field names of [`Event`], in an entry's field `events`).
//!
//! [`task_info`] reads a task's [`TaskInfo`]: its [`TaskState`] comes first from its stored
//! result (the truth), then from its graph inputs still pending, then from its records (the
//! newest bucket that holds one, its own or its batch's).

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::batch_events::{self, BatchEvent, BatchStage};
use crate::call_keys::split_call_key;
use crate::error::Result;
use crate::event_codec;
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

/// One thing that happened to a task (a record and part of a stream entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The id of its stream entry (`1733460000000-0`, shared by the events of one batch);
    /// empty before it is written and in records.
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

    /// This event with `error` (shortened as [`shorten_error`] does).
    pub fn with_error(mut self, error: &str) -> Self {
        self.error = Some(shorten_error(error));
        self
    }
}

/// Who records events: a client (its `host:pid`, on `queued` and `cancelled` events) or a
/// worker (its id). Written once per stream entry and in each record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A client, `host:pid`.
    Client(String),
    /// A worker, its id.
    Worker(String),
}

/// Writes events in batches (see the module docs), in the compact encoding of
/// docs/protocol.md §19.
#[derive(Debug, Clone)]
pub struct Recorder {
    keys: Keys,
    ttl_ms: u64,
    max_len: u64,
    enabled: bool,
    origin: Origin,
}

/// How often a worker writes the events of the runs that ended (docs/protocol.md §19): a
/// run's record and stream event reach Redis at most about this long after its result.
pub const WORKER_FLUSH: Duration = Duration::from_millis(250);

/// Most events in one `HSET` or stream entry (so that no command keeps Redis from serving
/// others for long).
const CHUNK: usize = 512;

/// The width of a records' time bucket for results kept `ttl_ms`: a 24th of it, at least a
/// minute (so that a task's records are in one of at most 26 buckets).
fn bucket_ms(ttl_ms: u64) -> u64 {
    (ttl_ms / 24).max(60_000)
}

impl Recorder {
    /// A recorder for the deployment of `store`, as `settings` say (`events`,
    /// `events_max_len`, `result_ttl`), of events that `origin` writes (its `by` or `worker`
    /// field; whatever those fields of the events given hold is not written).
    pub fn new(store: &Store, settings: &crate::Settings, origin: Origin) -> Self {
        Recorder {
            keys: store.keys().clone(),
            ttl_ms: store.ttl_ms(),
            max_len: settings.events_max_len,
            enabled: settings.events,
            origin,
        }
    }

    /// Whether events are recorded (the `events` setting).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn writer(&self) -> event_codec::Writer<'_> {
        match &self.origin {
            Origin::Client(by) => event_codec::Writer {
                by: Some(by),
                worker: None,
            },
            Origin::Worker(id) => event_codec::Writer {
                by: None,
                worker: Some(id),
            },
        }
    }

    /// The commands that write `events`: their records (per kind of record, an `HSET` per
    /// [`CHUNK`] events and a `PEXPIREAT`) and a stream entry per [`CHUNK`] events (`XADD
    /// MAXLEN ~`); none when there are no events or events are off. Add them to a pipeline
    /// with their replies ignored.
    pub fn commands(&self, events: &[Event]) -> Vec<redis::Cmd> {
        self.commands_with(events, &[])
    }

    /// [`Recorder::commands`] of `events` and of the records of `batches` (a field per batch
    /// in the same hashes, under its group, and stream entries of about [`CHUNK`] events'
    /// worth of batches each).
    pub fn commands_with(&self, events: &[Event], batches: &[BatchEvent]) -> Vec<redis::Cmd> {
        if !self.enabled || (events.is_empty() && batches.is_empty()) {
            return Vec::new();
        }
        let writer = self.writer();
        let width = bucket_ms(self.ttl_ms);
        let bucket = now_ms() / width;
        let expire_at = (bucket + 1) * width + self.ttl_ms;
        let mut commands = Vec::new();
        let mut record = Vec::with_capacity(64);
        for (name, queued) in [
            (self.keys.queued(bucket), true),
            (self.keys.states(bucket), false),
        ] {
            let mut group = events
                .iter()
                .filter(|e| (e.kind == EventKind::Queued) == queued)
                .map(Item::Event)
                .chain(
                    batches
                        .iter()
                        .filter(|b| (b.stage == BatchStage::Queued) == queued)
                        .map(Item::Batch),
                )
                .peekable();
            if group.peek().is_none() {
                continue;
            }
            while group.peek().is_some() {
                let mut hset = redis::cmd("HSET");
                hset.arg(&name);
                for item in group.by_ref().take(CHUNK) {
                    record.clear();
                    match item {
                        Item::Event(event) => {
                            event_codec::put_record(&mut record, event, writer);
                            hset.arg(event.key.as_str());
                        }
                        Item::Batch(batch) => {
                            batch_events::put_record(&mut record, batch, writer);
                            hset.arg(batch.group.as_str());
                        }
                    }
                    hset.arg(record.as_slice());
                }
                commands.push(hset);
            }
            let mut expire = redis::cmd("PEXPIREAT");
            expire.arg(&name).arg(expire_at);
            commands.push(expire);
        }
        let xadd = |events: &[Event], batches: &[BatchEvent], n: usize| {
            let mut xadd = redis::cmd("XADD");
            xadd.arg(self.keys.events())
                .arg("MAXLEN")
                .arg("~")
                .arg(self.max_len)
                .arg("*")
                .arg("n")
                .arg(n)
                .arg("v2")
                .arg(event_codec::stream_entry(events, batches, writer));
            xadd
        };
        for chunk in events.chunks(CHUNK) {
            commands.push(xadd(chunk, &[], chunk.len()));
        }
        // Whole batches, up to about CHUNK events' worth each.
        let mut from = 0;
        while from < batches.len() {
            let (mut to, mut n) = (from, 0);
            while to < batches.len() && (to == from || n + batches[to].weight() <= CHUNK) {
                n += batches[to].weight();
                to += 1;
            }
            commands.push(xadd(&[], &batches[from..to], n));
            from = to;
        }
        commands
    }

    /// Adds the [`Recorder::commands`] of `events` to `pipe`, replies ignored.
    pub fn add(&self, pipe: &mut redis::Pipeline, events: &[Event]) {
        for command in self.commands(events) {
            pipe.add_command(command).ignore();
        }
    }

    /// Writes `events` in one pipeline (nothing when there are none or events are off).
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn write(&self, store: &Store, events: &[Event]) -> Result<()> {
        self.write_with(store, events, &[]).await
    }

    /// Writes `events` and `batches` in one pipeline (nothing when there are none or events
    /// are off).
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn write_with(
        &self,
        store: &Store,
        events: &[Event],
        batches: &[BatchEvent],
    ) -> Result<()> {
        let commands = self.commands_with(events, batches);
        if commands.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for command in commands {
            pipe.add_command(command).ignore();
        }
        pipe.query_async::<()>(&mut store.connection()).await?;
        Ok(())
    }
}

/// A record to write: a task's event or a batch's.
enum Item<'a> {
    Event(&'a Event),
    Batch(&'a BatchEvent),
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
    /// The info of `key` from its stored outcome, pending inputs, queued record and last
    /// event on a worker.
    fn derive(
        key: TaskKey,
        outcome: Option<&[u8]>,
        mut waiting_for: Vec<TaskKey>,
        queued: Option<&Event>,
        last: Option<&Event>,
    ) -> Self {
        let of_run = |kind: EventKind| last.filter(|e| e.kind == kind);
        let run = last.filter(|e| e.kind != EventKind::DeadLettered);
        let mut info = TaskInfo {
            key,
            state: TaskState::Unknown,
            function: last.or(queued).map(|e| e.function.clone()),
            queued_at: queued.map(|e| e.at),
            queued_by: queued.and_then(|e| e.by.clone()),
            started_at: run.and_then(|e| match e.kind {
                EventKind::Started => Some(e.at),
                _ => e.started,
            }),
            worker: run.and_then(|e| e.worker.clone()),
            slot: run.and_then(|e| e.slot),
            attempt: run.and_then(|e| e.attempt),
            finished_at: last.filter(|e| e.kind.is_final()).map(|e| e.at),
            duration_ms: run.and_then(|e| e.duration_ms),
            retries: match last {
                Some(e) if e.kind == EventKind::Retried => e.attempt.unwrap_or(0) + 1,
                Some(e) => e.attempt.unwrap_or(0),
                None => 0,
            },
            failure: None,
            error: last.and_then(|e| e.error.clone()),
            dead_lettered_at: of_run(EventKind::DeadLettered).map(|e| e.at),
            waiting_for: Vec::new(),
        };
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
            None => match (last.map(|e| e.kind), queued) {
                (Some(EventKind::Started), _) => TaskState::Running,
                (Some(EventKind::DeadLettered | EventKind::Failed), _) => TaskState::Failed,
                (Some(EventKind::Cancelled), _) => TaskState::Cancelled,
                (Some(EventKind::Succeeded), _) => TaskState::Succeeded,
                (Some(_), _) | (None, Some(_)) => TaskState::Queued,
                (None, None) => TaskState::Unknown,
            },
        };
        info
    }
}

/// Reads the [`TaskInfo`] of each of `keys`, in order: their results, pending inputs and
/// records (of every bucket that may hold them, in one pipeline).
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn task_info(store: &Store, keys: &[TaskKey]) -> Result<Vec<TaskInfo>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let k = store.keys();
    // Newest bucket first: the first record found is the latest.
    let width = bucket_ms(store.ttl_ms());
    let newest = now_ms() / width;
    let buckets: Vec<u64> = (0..=store.ttl_ms() / width + 1)
        .map_while(|back| newest.checked_sub(back))
        .collect();
    let names: Vec<&str> = keys.iter().map(TaskKey::as_str).collect();
    // The batch group each key may be a call of (`call_keys`), its index there, and its
    // position among the groups read.
    let calls: Vec<Option<(&str, usize)>> = keys.iter().map(split_call_key).collect();
    let groups: Vec<&str> = calls.iter().flatten().map(|(group, _)| *group).collect();
    let mut position = Vec::with_capacity(keys.len());
    let mut next = 0;
    for call in &calls {
        position.push(call.map(|_| {
            next += 1;
            next - 1
        }));
    }
    let mut records = redis::pipe();
    for bucket in &buckets {
        records.cmd("HMGET").arg(k.queued(*bucket)).arg(&names);
        records.cmd("HMGET").arg(k.states(*bucket)).arg(&names);
        if !groups.is_empty() {
            records.cmd("HMGET").arg(k.queued(*bucket)).arg(&groups);
            records.cmd("HMGET").arg(k.states(*bucket)).arg(&groups);
        }
    }
    let found: Vec<Vec<Option<Vec<u8>>>> = records.query_async(&mut store.connection()).await?;
    let per_bucket = if groups.is_empty() { 2 } else { 4 };
    // Of `offset` (0 queued, 1 states), the latest record of key `i`, its own or its batch's
    // (the newer of the two). A record that does not decode (written by hand, say) counts as
    // absent.
    let latest = |offset: usize, i: usize| {
        let of = |offset: usize, at: usize| {
            found
                .iter()
                .skip(offset)
                .step_by(per_bucket)
                .filter_map(move |per_key| per_key.get(at).and_then(Option::as_deref))
        };
        let own = of(offset, i).find_map(|bytes| event_codec::decode_record(&keys[i], bytes));
        let batch = calls[i].zip(position[i]).and_then(|((group, index), at)| {
            of(offset + 2, at).find_map(|bytes| {
                batch_events::decode_record(group, bytes).and_then(|b| b.event_of(index))
            })
        });
        match (own, batch) {
            (Some(own), Some(batch)) if batch.at > own.at => Some(batch),
            (own, batch) => own.or(batch),
        }
    };
    let outcomes = store.get_outcomes(keys).await?;
    let pending = keys.iter().map(|key| async move {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(k.pending(key))
            .query_async(&mut store.connection())
            .await?;
        Ok::<_, crate::Error>(members)
    });
    let pending = futures::future::try_join_all(pending).await?;
    Ok(keys
        .iter()
        .zip(outcomes)
        .zip(pending)
        .enumerate()
        .map(|(i, ((key, outcome), pending))| {
            let pending = pending
                .into_iter()
                .filter_map(|p| TaskKey::new(p).ok())
                .collect();
            TaskInfo::derive(
                key.clone(),
                outcome.as_deref(),
                pending,
                latest(0, i).as_ref(),
                latest(1, i).as_ref(),
            )
        })
        .collect())
}

/// The events of one stream entry's fields (either encoding, §19), oldest first; empty if the
/// entry does not decode (one written by hand, say).
pub fn decode_stream_entry(fields: &HashMap<String, Vec<u8>>) -> Vec<Event> {
    event_codec::decode_entry(fields)
}

/// Reads the events of up to `count` stream entries after entry `after` (exclusive; `None`:
/// from the start, or from `since` ago when given), oldest first. Each event's
/// [`Event::id`] is its entry's (the events of one batch share it).
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn read_events(
    store: &Store,
    after: Option<&str>,
    since: Option<Duration>,
    count: usize,
) -> Result<Vec<Event>> {
    let from =
        since.map(|s| now_ms().saturating_sub(u64::try_from(s.as_millis()).unwrap_or(u64::MAX)));
    let start = match (after, from) {
        (Some(id), _) => format!("({id}"),
        (None, Some(from)) => from.to_string(),
        (None, None) => "-".to_owned(),
    };
    let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(store.keys().events())
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(&mut store.connection())
        .await?;
    let mut events = Vec::new();
    for (id, fields) in entries {
        // An entry that does not decode (written by hand, say) is skipped.
        let batch = event_codec::decode_entry(&fields);
        events.extend(
            batch
                .into_iter()
                .filter(|e| from.is_none_or(|f| e.at >= f))
                .map(|e| Event {
                    id: id.clone(),
                    ..e
                }),
        );
    }
    Ok(events)
}

/// The time now in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `text` cut to at most 500 characters (an ellipsis marks a cut), as records and events keep
/// a failure's message (the stored result keeps the whole message).
pub fn shorten_error(text: &str) -> String {
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

    /// An enabled recorder of worker `w-1`, keeping 1,000 stream entries.
    fn worker_recorder() -> Recorder {
        Recorder {
            keys: Keys::new("rask"),
            ttl_ms: 86_400_000,
            max_len: 1000,
            enabled: true,
            origin: Origin::Worker("w-1".into()),
        }
    }

    #[test]
    fn large_batches_are_written_in_chunks() {
        let recorder = worker_recorder();
        let events: Vec<Event> = (0..CHUNK + 1)
            .map(|i| Event::new(EventKind::Succeeded, key(&format!("t-{i}")), "t"))
            .collect();
        let names: Vec<String> = recorder
            .commands(&events)
            .iter()
            .map(|c| {
                let packed = String::from_utf8_lossy(&c.get_packed_command()).into_owned();
                packed.split("\r\n").nth(2).unwrap_or_default().to_owned()
            })
            .collect();
        // Two HSETs of states (no queued events), one expiry, two stream entries.
        assert_eq!(names, ["HSET", "HSET", "PEXPIREAT", "XADD", "XADD"]);
        let off = Recorder {
            enabled: false,
            ..recorder
        };
        assert!(off.commands(&events).is_empty());
    }

    #[test]
    fn a_batch_is_one_field_and_stream_entries_hold_whole_batches() {
        let recorder = worker_recorder();
        let id = crate::call_keys::BatchId::new();
        let first = id.call_key("inc", 0).unwrap();
        let batch = BatchEvent {
            stage: BatchStage::Ended,
            group: first.as_str()[..first.as_str().len() - 4].to_owned(),
            function: "inc".into(),
            count: 100,
            at: now_ms(),
            by: None,
            worker: None,
            slot: Some(0),
            attempt: Some(0),
            runs: vec![
                Some(batch_events::CallRun {
                    kind: EventKind::Succeeded,
                    started: now_ms(),
                    duration_ms: 0,
                    error: None,
                });
                100
            ],
        };
        let batches = vec![batch; 12];
        let commands = recorder.commands_with(&[], &batches);
        let packed: Vec<String> = commands
            .iter()
            .map(|c| String::from_utf8_lossy(&c.get_packed_command()).into_owned())
            .collect();
        let names: Vec<&str> = packed
            .iter()
            .map(|p| p.split("\r\n").nth(2).unwrap_or_default())
            .collect();
        // One HSET of 12 fields, its expiry, 3 entries of 5, 5 and 2 batches (<= 512 calls).
        assert_eq!(names, ["HSET", "PEXPIREAT", "XADD", "XADD", "XADD"]);
        assert!(packed[0].starts_with("*26\r\n"), "{}", &packed[0][..20]);
        let counts: Vec<&str> = packed[2..]
            .iter()
            .map(|p| p.split("\r\n").nth(16).unwrap_or_default())
            .collect();
        assert_eq!(counts, ["500", "500", "200"]);
    }

    #[test]
    fn errors_are_shortened() {
        let long = "é".repeat(MAX_ERROR_CHARS + 10);
        let event = Event::new(EventKind::Failed, key("f-1"), "f").with_error(&long);
        assert_eq!(event.error.unwrap().chars().count(), MAX_ERROR_CHARS + 1);
    }

    fn event(kind: EventKind, at: u64) -> Event {
        Event {
            at,
            ..Event::new(kind, key("t-1"), "t")
        }
    }

    #[test]
    fn records_round_trip() {
        let mut e = event(EventKind::Failed, 5).with_error("x");
        e.slot = Some(2);
        let bytes = rmp_serde::to_vec_named(&e).unwrap();
        assert_eq!(rmp_serde::from_slice::<Event>(&bytes).unwrap(), e);
    }

    #[test]
    fn state_comes_from_the_result_first() {
        let running = event(EventKind::Started, 5);
        let queued = event(EventKind::Queued, 1);
        let value = Outcome::Value(vec![1]).encode().unwrap();
        let info = TaskInfo::derive(
            key("t-1"),
            Some(&value),
            vec![],
            Some(&queued),
            Some(&running),
        );
        assert_eq!(info.state, TaskState::Succeeded);
        assert_eq!((info.queued_at, info.started_at), (Some(1), Some(5)));
        let failure = TaskFailure::new(FailureKind::Cancelled, "stop", "t", key("t-1"), "w");
        let cancelled = Outcome::Failure(failure).encode().unwrap();
        let info = TaskInfo::derive(key("t-1"), Some(&cancelled), vec![], None, Some(&running));
        assert_eq!(info.state, TaskState::Cancelled);
        assert_eq!(info.error.as_deref(), Some("stop"));
        assert_eq!(info.failure, Some(FailureKind::Cancelled));
    }

    #[test]
    fn state_without_a_result() {
        let queued = event(EventKind::Queued, 1);
        let derive = |pending: Vec<TaskKey>, q: Option<&Event>, last: Option<EventKind>| {
            let last = last.map(|k| event(k, 2));
            TaskInfo::derive(key("t-1"), None, pending, q, last.as_ref()).state
        };
        assert_eq!(derive(vec![key("a-1")], None, None), TaskState::Waiting);
        assert_eq!(derive(vec![], Some(&queued), None), TaskState::Queued);
        let started = Some(EventKind::Started);
        assert_eq!(derive(vec![], Some(&queued), started), TaskState::Running);
        // Retried: queued again (its result is not stored yet).
        assert_eq!(
            derive(vec![], None, Some(EventKind::Retried)),
            TaskState::Queued
        );
        let dead = Some(EventKind::DeadLettered);
        assert_eq!(derive(vec![], None, dead), TaskState::Failed);
        assert_eq!(derive(vec![], None, None), TaskState::Unknown);
        let mut retried = event(EventKind::Retried, 3);
        retried.attempt = Some(1);
        let info = TaskInfo::derive(key("t-1"), None, vec![], None, Some(&retried));
        assert_eq!(info.retries, 2);
    }
}
