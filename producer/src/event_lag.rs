//! How far behind the task event stream is ([`rask_common::events`]), for the cluster metrics
//! of `rask dashboard`'s `/metrics`: [`Monitor::event_stream_head`] reads the stream's length
//! and its newest entry (two commands in one round trip, at scrape time: nothing on the task
//! path).

use rask_common::events::decode_stream_entry;

use crate::Monitor;

/// The newest part of the event stream at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct EventStreamHead {
    /// Entries in the stream (`XLEN`; each entry is a batch of events).
    pub entries: u64,
    /// When the newest entry was added (Unix ms, from its id); `None` when the stream is empty.
    pub newest_entry_ms: Option<u64>,
    /// The latest `at` (Unix ms) among the events of the newest entry; `None` when the stream
    /// is empty or its newest entry does not decode.
    pub newest_event_at: Option<u64>,
}

impl EventStreamHead {
    /// The event lag at `now_ms`: how long ago the newest recorded event happened, in seconds
    /// (`None` with an empty stream). While tasks run it is how late events reach the stream
    /// (batching, the workers' 250 ms flush); while nothing runs it grows with the idle time.
    pub fn lag_seconds(&self, now_ms: u64) -> Option<f64> {
        let at = self.newest_event_at.or(self.newest_entry_ms)?;
        Some(now_ms.saturating_sub(at) as f64 / 1000.0)
    }
}

impl Monitor {
    /// The event stream's length and newest entry (see [`EventStreamHead`]).
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn event_stream_head(&self) -> crate::Result<EventStreamHead> {
        let name = self.store().keys().events();
        type Entry = (String, std::collections::HashMap<String, Vec<u8>>);
        let (entries, newest): (u64, Vec<Entry>) = redis::pipe()
            .cmd("XLEN")
            .arg(&name)
            .cmd("XREVRANGE")
            .arg(&name)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.store().connection())
            .await?;
        let Some((id, fields)) = newest.into_iter().next() else {
            return Ok(EventStreamHead {
                entries,
                ..EventStreamHead::default()
            });
        };
        let newest_event_at = decode_stream_entry(&fields).iter().map(|e| e.at).max();
        Ok(EventStreamHead {
            entries,
            newest_entry_ms: id.split('-').next().and_then(|ms| ms.parse().ok()),
            newest_event_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_is_the_age_of_the_newest_event() {
        let empty = EventStreamHead::default();
        assert_eq!(empty.lag_seconds(5_000), None);
        let head = EventStreamHead {
            entries: 3,
            newest_entry_ms: Some(4_000),
            newest_event_at: Some(3_750),
        };
        assert_eq!(head.lag_seconds(5_000), Some(1.25));
        let undecoded = EventStreamHead {
            newest_event_at: None,
            ..head
        };
        assert_eq!(undecoded.lag_seconds(5_000), Some(1.0));
        assert_eq!(head.lag_seconds(1_000), Some(0.0), "clocks a little apart");
    }
}
