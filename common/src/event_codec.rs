//! The compact MessagePack encoding of task events in Redis (docs/protocol.md §19): what
//! [`crate::events::Recorder`] writes and what [`crate::events`]' readers decode.
//!
//! Recording events is on the hot path of every task, and Redis's cost grows with the bytes it
//! is sent (each written twice: into memory and into its append-only file). So events are
//! written as positional arrays, their kind as a number, times as small offsets, and what a
//! batch shares (who wrote it, its functions) once per stream entry: about a third of the
//! bytes of a map with field names. The encoder writes straight into one buffer per command,
//! with no value allocated per event.
//!
//! - A **record** (the value of a task's field in a records hash) is
//!   `[kind, at, function, by, worker, slot, attempt, at - started, duration_ms, error]`, with
//!   `nil` for an absent field and trailing absent fields left out.
//! - A **stream entry**'s `v2` field is `[by, worker, base, events, functions]`: `base` the
//!   smallest `at` of its events, each event
//!   `[kind, key, function index, at - base, slot, attempt, at - started, duration_ms, error]`
//!   (trailing absent fields left out), `functions` the distinct functions in order of first use;
//!   then, in an entry with batch records, a sixth item `batches`: each batch's item
//!   ([`crate::batch_events`]), which readers expand into one event per call.
//!
//! Readers also decode the first encoding (a MessagePack map with the field names of
//! [`Event`]), which writers of earlier versions may still write.

use std::collections::HashMap;

use rmpv::Value;

use crate::batch_events::{self, BatchEvent};
use crate::events::{Event, EventKind};
use crate::keys::TaskKey;

/// The number that stands for `kind`.
pub(crate) fn kind_code(kind: EventKind) -> u64 {
    match kind {
        EventKind::Queued => 0,
        EventKind::Started => 1,
        EventKind::Succeeded => 2,
        EventKind::Failed => 3,
        EventKind::Retried => 4,
        EventKind::Cancelled => 5,
        EventKind::DeadLettered => 6,
    }
}

/// The kind that `code` stands for.
pub(crate) fn kind_of(code: u64) -> Option<EventKind> {
    Some(match code {
        0 => EventKind::Queued,
        1 => EventKind::Started,
        2 => EventKind::Succeeded,
        3 => EventKind::Failed,
        4 => EventKind::Retried,
        5 => EventKind::Cancelled,
        6 => EventKind::DeadLettered,
        _ => return None,
    })
}

/// One positional field.
#[derive(Clone, Copy)]
pub(crate) enum Field<'a> {
    Uint(u64),
    Str(&'a str),
    Nil,
}

impl<'a> Field<'a> {
    pub(crate) fn opt_uint(n: Option<impl Into<u64>>) -> Self {
        n.map_or(Field::Nil, |n| Field::Uint(n.into()))
    }

    pub(crate) fn opt_str(s: Option<&'a str>) -> Self {
        s.map_or(Field::Nil, Field::Str)
    }

    /// Appends the field as a value of its own.
    pub(crate) fn put(self, out: &mut Vec<u8>) {
        match self {
            Field::Uint(n) => put_uint(out, n),
            Field::Str(s) => put_str(out, s),
            Field::Nil => out.push(0xc0),
        }
    }
}

/// Appends the MessagePack header of an array of `len` items.
pub(crate) fn put_array_len(out: &mut Vec<u8>, len: usize) {
    match u32::try_from(len) {
        Ok(n) if n < 16 => out.push(0x90 | n as u8),
        Ok(n) if n <= 0xffff => {
            out.push(0xdc);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdd);
            let n = u32::try_from(len).unwrap_or(u32::MAX);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// Appends `n` in its shortest MessagePack form.
pub(crate) fn put_uint(out: &mut Vec<u8>, n: u64) {
    if n < 0x80 {
        out.push(n as u8);
    } else if let Ok(n) = u8::try_from(n) {
        out.extend_from_slice(&[0xcc, n]);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(0xcd);
        out.extend_from_slice(&n.to_be_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        out.push(0xce);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// Appends `s` as a MessagePack string.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if let Ok(n) = u8::try_from(len) {
        out.extend_from_slice(&[0xd9, n]);
    } else if let Ok(n) = u16::try_from(len) {
        out.push(0xda);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(0xdb);
        let n = u32::try_from(len).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

/// Appends `fields` as an array, trailing `Nil`s left out.
pub(crate) fn put_fields(out: &mut Vec<u8>, fields: &[Field<'_>]) {
    let len = fields
        .iter()
        .rposition(|f| !matches!(f, Field::Nil))
        .map_or(0, |last| last + 1);
    put_array_len(out, len);
    for field in &fields[..len] {
        field.put(out);
    }
}

/// How long before `event.at` its run started (events that end a run).
fn since_start(event: &Event) -> Option<u64> {
    event.started.map(|s| event.at.saturating_sub(s))
}

/// Who wrote a batch of events: the client (`by`, `host:pid`) or the worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Writer<'a> {
    pub(crate) by: Option<&'a str>,
    pub(crate) worker: Option<&'a str>,
}

/// Appends the record of `event` (written by `writer`) to `out`.
pub(crate) fn put_record(out: &mut Vec<u8>, event: &Event, writer: Writer<'_>) {
    put_fields(
        out,
        &[
            Field::Uint(kind_code(event.kind)),
            Field::Uint(event.at),
            Field::Str(&event.function),
            Field::opt_str(writer.by),
            Field::opt_str(writer.worker),
            Field::opt_uint(event.slot),
            Field::opt_uint(event.attempt),
            Field::opt_uint(since_start(event)),
            Field::opt_uint(event.duration_ms),
            Field::opt_str(event.error.as_deref()),
        ],
    );
}

/// The distinct functions of a stream entry, in order of first use.
#[derive(Default)]
struct Functions<'a> {
    names: Vec<&'a str>,
    last: usize,
}

impl<'a> Functions<'a> {
    /// The index of `function`, added if new.
    fn index(&mut self, function: &'a str) -> usize {
        let index = if self.names.get(self.last) == Some(&function) {
            self.last
        } else if let Some(i) = self.names.iter().position(|f| *f == function) {
            i
        } else {
            self.names.push(function);
            self.names.len() - 1
        };
        self.last = index;
        index
    }
}

/// The `v2` field of the stream entry of `events` and `batches` (written by `writer`); they
/// are not both empty. An entry without batches has no `batches` item (as before batches).
pub(crate) fn stream_entry(
    events: &[Event],
    batches: &[BatchEvent],
    writer: Writer<'_>,
) -> Vec<u8> {
    let base = (events.iter().map(|e| e.at))
        .chain(batches.iter().map(|b| b.at))
        .min()
        .unwrap_or(0);
    let mut out = Vec::with_capacity(32 + events.len() * 56 + batches.len() * 256);
    put_array_len(&mut out, if batches.is_empty() { 5 } else { 6 });
    Field::opt_str(writer.by).put(&mut out);
    Field::opt_str(writer.worker).put(&mut out);
    put_uint(&mut out, base);
    put_array_len(&mut out, events.len());
    let mut functions = Functions::default();
    for event in events {
        let index = functions.index(&event.function);
        put_fields(
            &mut out,
            &[
                Field::Uint(kind_code(event.kind)),
                Field::Str(event.key.as_str()),
                Field::Uint(index as u64),
                Field::Uint(event.at - base),
                Field::opt_uint(event.slot),
                Field::opt_uint(event.attempt),
                Field::opt_uint(since_start(event)),
                Field::opt_uint(event.duration_ms),
                Field::opt_str(event.error.as_deref()),
            ],
        );
    }
    // The batches' functions are indexed before the list is written.
    let mut items = Vec::with_capacity(batches.len() * 256);
    for batch in batches {
        let index = functions.index(&batch.function);
        batch_events::put_stream_item(&mut items, batch, index, base);
    }
    put_array_len(&mut out, functions.names.len());
    for function in functions.names {
        put_str(&mut out, function);
    }
    if !batches.is_empty() {
        put_array_len(&mut out, batches.len());
        out.extend_from_slice(&items);
    }
    out
}

/// Item `i` of `items`, `None` when absent or nil.
pub(crate) fn item(items: &[Value], i: usize) -> Option<&Value> {
    items.get(i).filter(|v| !v.is_nil())
}

pub(crate) fn uint(items: &[Value], i: usize) -> Option<u64> {
    item(items, i).and_then(Value::as_u64)
}

pub(crate) fn u32_at(items: &[Value], i: usize) -> Option<u32> {
    uint(items, i).and_then(|n| u32::try_from(n).ok())
}

pub(crate) fn string(items: &[Value], i: usize) -> Option<String> {
    item(items, i).and_then(Value::as_str).map(str::to_owned)
}

/// An event of `kind` for `key` with the fields every encoding has.
fn event(kind: EventKind, key: TaskKey, function: String, at: u64) -> Event {
    Event {
        at,
        ..Event::new(kind, key, function)
    }
}

/// The event of `key`'s record `bytes` (either encoding), `None` if it does not decode (a
/// record written by hand, say).
pub(crate) fn decode_record(key: &TaskKey, bytes: &[u8]) -> Option<Event> {
    let value = rmpv::decode::read_value(&mut &bytes[..]).ok()?;
    let Value::Array(items) = value else {
        // The first encoding: a map with field names.
        return rmp_serde::from_slice::<Event>(bytes).ok();
    };
    let kind = kind_of(uint(&items, 0)?)?;
    let at = uint(&items, 1)?;
    let mut e = event(kind, key.clone(), string(&items, 2)?, at);
    e.by = string(&items, 3);
    e.worker = string(&items, 4);
    e.slot = u32_at(&items, 5);
    e.attempt = u32_at(&items, 6);
    e.started = uint(&items, 7).map(|off| at.saturating_sub(off));
    e.duration_ms = uint(&items, 8);
    e.error = string(&items, 9);
    Some(e)
}

/// The events of a stream entry's fields (either encoding), oldest first as written; empty if
/// it does not decode (an entry written by hand, say).
pub(crate) fn decode_entry(fields: &HashMap<String, Vec<u8>>) -> Vec<Event> {
    if let Some(bytes) = fields.get("v2") {
        return decode_v2(bytes).unwrap_or_default();
    }
    fields
        .get("events")
        .and_then(|b| rmp_serde::from_slice::<Vec<Event>>(b).ok())
        .unwrap_or_default()
}

fn decode_v2(bytes: &[u8]) -> Option<Vec<Event>> {
    let Value::Array(parts) = rmpv::decode::read_value(&mut &bytes[..]).ok()? else {
        return None;
    };
    let by = string(&parts, 0);
    let worker = string(&parts, 1);
    let base = uint(&parts, 2)?;
    let functions: Vec<&str> = item(&parts, 4)?
        .as_array()?
        .iter()
        .map(|f| f.as_str().unwrap_or("-"))
        .collect();
    let mut events = Vec::new();
    for raw in item(&parts, 3)?.as_array()? {
        let Some(items) = raw.as_array() else {
            continue;
        };
        let Some(e) = (|| {
            let kind = kind_of(uint(items, 0)?)?;
            let key = TaskKey::new(item(items, 1)?.as_str()?).ok()?;
            let function = functions.get(usize::try_from(uint(items, 2)?).ok()?)?;
            let at = base.checked_add(uint(items, 3)?)?;
            let mut e = event(kind, key, (*function).to_owned(), at);
            e.by.clone_from(&by);
            e.worker.clone_from(&worker);
            e.slot = u32_at(items, 4);
            e.attempt = u32_at(items, 5);
            e.started = uint(items, 6).map(|off| at.saturating_sub(off));
            e.duration_ms = uint(items, 7);
            e.error = string(items, 8);
            Some(e)
        })() else {
            continue;
        };
        events.push(e);
    }
    // Batches (absent in entries without any, and before batches were recorded as one).
    for raw in item(&parts, 5)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let batch =
            batch_events::decode_stream_item(raw, &functions, base, by.as_ref(), worker.as_ref());
        events.extend(batch.iter().flat_map(BatchEvent::events));
    }
    Some(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> TaskKey {
        TaskKey::new(k).unwrap()
    }

    #[test]
    fn numbers_strings_and_arrays_match_rmp() {
        for n in [
            0u64,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            1 << 32,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_uint(&mut out, n);
            assert_eq!(out, rmp_serde::to_vec(&n).unwrap(), "{n}");
        }
        for len in [0usize, 5, 31, 32, 255, 256, 70_000] {
            let s = "x".repeat(len);
            let mut out = Vec::new();
            put_str(&mut out, &s);
            assert_eq!(out, rmp_serde::to_vec(&s).unwrap(), "{len}");
        }
        for n in [0usize, 3, 15, 16, 300, 65_535, 65_536] {
            let whole = rmp_serde::to_vec(&vec![0u8; n]).unwrap();
            let mut header = Vec::new();
            put_array_len(&mut header, n);
            assert_eq!(&whole[..header.len()], header.as_slice(), "{n}");
        }
    }

    fn finished() -> Event {
        let mut e = event(
            EventKind::Failed,
            key("parse-1"),
            "parse".into(),
            1_765_000_000_123,
        );
        e.slot = Some(3);
        e.attempt = Some(1);
        e.started = Some(1_765_000_000_100);
        e.duration_ms = Some(23);
        e.error = Some("bad input".into());
        e
    }

    #[test]
    fn records_round_trip_and_are_small() {
        let worker = Writer {
            by: None,
            worker: Some("host-12-ab"),
        };
        let e = finished();
        let mut out = Vec::new();
        put_record(&mut out, &e, worker);
        let back = decode_record(&e.key, &out).unwrap();
        assert_eq!(
            back,
            Event {
                worker: Some("host-12-ab".into()),
                ..e.clone()
            }
        );
        assert!(out.len() < rmp_serde::to_vec_named(&e).unwrap().len() / 2);

        let client = Writer {
            by: Some("host:12"),
            worker: None,
        };
        let queued = event(EventKind::Queued, key("inc-1"), "inc".into(), 5);
        out.clear();
        put_record(&mut out, &queued, client);
        // kind, at, function, by: the rest left out.
        assert_eq!(out[0], 0x94);
        let back = decode_record(&queued.key, &out).unwrap();
        assert_eq!(back.by.as_deref(), Some("host:12"));
        assert_eq!(
            (back.kind, back.at, back.slot),
            (EventKind::Queued, 5, None)
        );
    }

    #[test]
    fn records_of_the_first_encoding_still_decode() {
        let e = finished();
        let named = rmp_serde::to_vec_named(&e).unwrap();
        assert_eq!(decode_record(&e.key, &named), Some(e.clone()));
        assert_eq!(decode_record(&e.key, b"\xc1garbage"), None);
        let mut fields = HashMap::new();
        fields.insert("events".to_owned(), rmp_serde::to_vec_named(&[&e]).unwrap());
        assert_eq!(decode_entry(&fields), vec![e]);
    }

    #[test]
    fn stream_entries_round_trip() {
        let writer = Writer {
            by: None,
            worker: Some("w-1"),
        };
        let mut second = event(
            EventKind::Succeeded,
            key("inc-2"),
            "inc".into(),
            1_765_000_000_000,
        );
        second.duration_ms = Some(0);
        let third = event(
            EventKind::Started,
            key("inc-3"),
            "inc".into(),
            1_765_000_000_200,
        );
        let events = vec![finished(), second, third];
        let mut fields = HashMap::new();
        fields.insert("v2".to_owned(), stream_entry(&events, &[], writer));
        let back = decode_entry(&fields);
        let expected: Vec<Event> = events
            .into_iter()
            .map(|e| Event {
                worker: Some("w-1".into()),
                ..e
            })
            .collect();
        assert_eq!(back, expected);
        // Not a valid entry: no events, no panic.
        fields.insert("v2".to_owned(), vec![0x93, 1, 2, 3]);
        assert!(decode_entry(&fields).is_empty());
    }
}
