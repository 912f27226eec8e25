//! The events of a batch message's calls, recorded once for the whole batch
//! (docs/protocol.md §19, "Batches"): the client's `queued` record of the batch, the worker's
//! `started` record of a long batch run and its record of the ended run with each call's
//! outcome kind, start, duration and error, in one value per batch instead of one per call.
//!
//! A batch's calls have keys of one group ([`crate::call_keys`]), so readers find the record
//! of a call under its group (`task_info`) and expand a batch's stream item into one
//! [`Event`] per call: every reader sees the calls' events as if each had been recorded alone.
//!
//! Encoding (the value of the group's field in a records hash):
//! `[stage, at, function, by, worker, slot, attempt, count, runs]`, `stage` 0 queued, 1
//! started, 2 ended; `at` when the batch was published (queued) or its run started; `runs`
//! (ended only) one item per call in order: `nil` for a call not run in this delivery (its
//! outcome was stored before), else `[kind, started - at, duration_ms, error]`. In a stream
//! entry's `v2` field, its item in `batches` is `[stage, group, function index, at - base,
//! slot, attempt, count, runs]`. Trailing absent fields are left out.

use rmpv::Value;

use crate::call_keys::{call_key_of, MAX_INDEXED};
use crate::event_codec::{
    item, kind_code, kind_of, put_array_len, put_fields, put_str, put_uint, string, u32_at, uint,
    Field, Writer,
};
use crate::events::{Event, EventKind};

/// Where a batch is in its life (its record's stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchStage {
    /// A client published it: each call is `queued`.
    Queued,
    /// A worker runs it (recorded only for runs longer than a worker's flush interval): each
    /// call without a result is `running`.
    Started,
    /// Its run ended: each call's event is in [`BatchEvent::runs`].
    Ended,
}

impl BatchStage {
    fn code(self) -> u64 {
        match self {
            BatchStage::Queued => 0,
            BatchStage::Started => 1,
            BatchStage::Ended => 2,
        }
    }

    fn of(code: u64) -> Option<Self> {
        Some(match code {
            0 => BatchStage::Queued,
            1 => BatchStage::Started,
            2 => BatchStage::Ended,
            _ => return None,
        })
    }
}

/// How one call of a batch run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRun {
    /// `succeeded`, `failed`, `cancelled` or `retried`.
    pub kind: EventKind,
    /// When it started (Unix ms).
    pub started: u64,
    /// How long it ran, in ms (its event's `at` is `started + duration_ms`).
    pub duration_ms: u64,
    /// Its failure's message (shortened), if it failed.
    pub error: Option<String>,
}

/// What happened to the calls of one batch message, recorded as one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEvent {
    /// Queued, started or ended.
    pub stage: BatchStage,
    /// The calls' group: their keys are the group followed by their index
    /// ([`crate::call_keys`]).
    pub group: String,
    /// The calls' function.
    pub function: String,
    /// How many calls.
    pub count: u32,
    /// When it was published (queued) or its run started (Unix ms).
    pub at: u64,
    /// Who published it (`host:pid`; set by readers).
    pub by: Option<String>,
    /// The worker that ran it (set by readers).
    pub worker: Option<String>,
    /// The worker's concurrency slot of its run.
    pub slot: Option<u32>,
    /// The calls' attempt (`0` for the first).
    pub attempt: Option<u32>,
    /// Ended: how each call ended, in order (`None`: not run in this delivery).
    pub runs: Vec<Option<CallRun>>,
}

impl BatchEvent {
    /// How many events it stands for.
    pub fn weight(&self) -> usize {
        match self.stage {
            BatchStage::Ended => self.runs.iter().flatten().count(),
            _ => self.count as usize,
        }
    }

    /// The event of call `index` it stands for, if any.
    pub fn event_of(&self, index: usize) -> Option<Event> {
        if index >= self.count as usize {
            return None;
        }
        let key = call_key_of(&self.group, index)?;
        let mut event = match self.stage {
            BatchStage::Queued => Event::new(EventKind::Queued, key, self.function.clone()),
            BatchStage::Started => Event::new(EventKind::Started, key, self.function.clone()),
            BatchStage::Ended => {
                let run = self.runs.get(index)?.as_ref()?;
                let mut event = Event::new(run.kind, key, self.function.clone());
                event.started = Some(run.started);
                event.duration_ms = Some(run.duration_ms);
                event.error.clone_from(&run.error);
                event.at = run.started.saturating_add(run.duration_ms);
                event
            }
        };
        if self.stage != BatchStage::Ended {
            event.at = self.at;
        }
        event.by.clone_from(&self.by);
        event.worker.clone_from(&self.worker);
        event.slot = self.slot;
        event.attempt = self.attempt;
        Some(event)
    }

    /// The events it stands for, in call order.
    pub fn events(&self) -> Vec<Event> {
        (0..self.count as usize)
            .filter_map(|i| self.event_of(i))
            .collect()
    }
}

/// The positional fields shared by a record and a stream item, from `slot` on.
fn put_tail(out: &mut Vec<u8>, batch: &BatchEvent) {
    // slot, attempt, count, runs: `put_fields` cannot hold the runs, so trailing absents are
    // left out by hand.
    let runs = batch.stage == BatchStage::Ended;
    let fields = [
        Field::opt_uint(batch.slot),
        Field::opt_uint(batch.attempt),
        Field::Uint(u64::from(batch.count)),
    ];
    for field in fields {
        field.put(out);
    }
    if runs {
        put_runs(out, batch);
    }
}

fn put_runs(out: &mut Vec<u8>, batch: &BatchEvent) {
    put_array_len(out, batch.runs.len());
    for run in &batch.runs {
        match run {
            None => out.push(0xc0),
            Some(run) => put_fields(
                out,
                &[
                    Field::Uint(kind_code(run.kind)),
                    Field::Uint(run.started.saturating_sub(batch.at)),
                    Field::Uint(run.duration_ms),
                    Field::opt_str(run.error.as_deref()),
                ],
            ),
        }
    }
}

/// Appends the record of `batch` (written by `writer`) to `out`.
pub(crate) fn put_record(out: &mut Vec<u8>, batch: &BatchEvent, writer: Writer<'_>) {
    let len = if batch.stage == BatchStage::Ended {
        9
    } else {
        8
    };
    put_array_len(out, len);
    put_uint(out, batch.stage.code());
    put_uint(out, batch.at);
    put_str(out, &batch.function);
    Field::opt_str(writer.by).put(out);
    Field::opt_str(writer.worker).put(out);
    put_tail(out, batch);
}

/// Appends the stream item of `batch`, its function at `function` in the entry's list and
/// its time as an offset from `base`.
pub(crate) fn put_stream_item(out: &mut Vec<u8>, batch: &BatchEvent, function: usize, base: u64) {
    let len = if batch.stage == BatchStage::Ended {
        8
    } else {
        7
    };
    put_array_len(out, len);
    put_uint(out, batch.stage.code());
    put_str(out, &batch.group);
    put_uint(out, function as u64);
    put_uint(out, batch.at.saturating_sub(base));
    put_tail(out, batch);
}

/// A decoded call count, if a batch can have that many calls (at most [`MAX_INDEXED`]): a
/// forged record or stream item claiming billions of calls would otherwise have readers
/// expand it into billions of events.
fn count(count: u32) -> Option<u32> {
    (count as usize <= MAX_INDEXED).then_some(count)
}

fn decode_runs(value: Option<&Value>, at: u64) -> Vec<Option<CallRun>> {
    let Some(items) = value.and_then(Value::as_array) else {
        return Vec::new();
    };
    items
        .iter()
        .map(|run| {
            let fields = run.as_array()?;
            let started = at.checked_add(uint(fields, 1)?)?;
            Some(CallRun {
                kind: kind_of(uint(fields, 0)?)?,
                started,
                duration_ms: uint(fields, 2)?,
                error: string(fields, 3),
            })
        })
        .collect()
}

/// The batch of group `group`'s record `bytes`, `None` if it does not decode.
pub(crate) fn decode_record(group: &str, bytes: &[u8]) -> Option<BatchEvent> {
    let Value::Array(items) = rmpv::decode::read_value(&mut &bytes[..]).ok()? else {
        return None;
    };
    let stage = BatchStage::of(uint(&items, 0)?)?;
    let at = uint(&items, 1)?;
    Some(BatchEvent {
        stage,
        group: group.to_owned(),
        function: string(&items, 2)?,
        count: count(u32_at(&items, 7)?)?,
        at,
        by: string(&items, 3),
        worker: string(&items, 4),
        slot: u32_at(&items, 5),
        attempt: u32_at(&items, 6),
        runs: decode_runs(item(&items, 8), at),
    })
}

/// The batch of a stream item (of an entry written by `by`/`worker`, times from `base`,
/// functions by index), `None` if it does not decode.
pub(crate) fn decode_stream_item(
    raw: &Value,
    functions: &[&str],
    base: u64,
    by: Option<&String>,
    worker: Option<&String>,
) -> Option<BatchEvent> {
    let items = raw.as_array()?;
    let at = base.checked_add(uint(items, 3)?)?;
    Some(BatchEvent {
        stage: BatchStage::of(uint(items, 0)?)?,
        group: string(items, 1)?,
        function: (*functions.get(usize::try_from(uint(items, 2)?).ok()?)?).to_owned(),
        count: count(u32_at(items, 6)?)?,
        at,
        by: by.cloned(),
        worker: worker.cloned(),
        slot: u32_at(items, 4),
        attempt: u32_at(items, 5),
        runs: decode_runs(item(items, 7), at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call_keys::BatchId;

    pub(crate) fn ended() -> BatchEvent {
        let group = BatchId::new().call_key("inc", 0).unwrap();
        let group = group.as_str()[..group.as_str().len() - 4].to_owned();
        BatchEvent {
            stage: BatchStage::Ended,
            group,
            function: "inc".into(),
            count: 3,
            at: 1_765_000_000_000,
            by: None,
            worker: Some("w-1".into()),
            slot: Some(1),
            attempt: Some(0),
            runs: vec![
                Some(CallRun {
                    kind: EventKind::Succeeded,
                    started: 1_765_000_000_000,
                    duration_ms: 0,
                    error: None,
                }),
                None,
                Some(CallRun {
                    kind: EventKind::Failed,
                    started: 1_765_000_000_002,
                    duration_ms: 5,
                    error: Some("bad".into()),
                }),
            ],
        }
    }

    #[test]
    fn records_round_trip_and_stand_for_each_call() {
        let batch = ended();
        let writer = Writer {
            by: None,
            worker: Some("w-1"),
        };
        let mut out = Vec::new();
        put_record(&mut out, &batch, writer);
        assert!(out.len() < 60, "{} bytes", out.len());
        let back = decode_record(&batch.group, &out).unwrap();
        assert_eq!(back, batch);
        let events = back.events();
        assert_eq!(events.len(), 2);
        assert_eq!(back.weight(), 2);
        assert_eq!(events[0].key.as_str(), format!("{}0000", batch.group));
        assert_eq!(events[1].key.as_str(), format!("{}0002", batch.group));
        assert_eq!(events[1].kind, EventKind::Failed);
        assert_eq!(events[1].at, 1_765_000_000_007);
        assert_eq!(events[1].started, Some(1_765_000_000_002));
        assert_eq!(events[1].error.as_deref(), Some("bad"));
        assert_eq!(
            (events[1].worker.as_deref(), events[1].slot),
            (Some("w-1"), Some(1))
        );
        assert!(back.event_of(1).is_none() && back.event_of(3).is_none());

        let queued = BatchEvent {
            stage: BatchStage::Queued,
            runs: Vec::new(),
            slot: None,
            attempt: None,
            worker: None,
            by: Some("host:1".into()),
            ..batch
        };
        out.clear();
        let client = Writer {
            by: Some("host:1"),
            worker: None,
        };
        put_record(&mut out, &queued, client);
        let back = decode_record(&queued.group, &out).unwrap();
        assert_eq!(back, queued);
        assert_eq!(back.weight(), 3);
        let events = back.events();
        assert!(events.iter().all(|e| e.kind == EventKind::Queued
            && e.at == queued.at
            && e.by.as_deref() == Some("host:1")));
        assert_eq!(decode_record("g", b"\x93\x07\x01\x02"), None);

        // A forged count past what a batch can number does not decode (no billion events).
        let forged = BatchEvent {
            count: u32::MAX,
            ..queued
        };
        out.clear();
        put_record(&mut out, &forged, client);
        assert_eq!(decode_record(&forged.group, &out), None);
    }
}
