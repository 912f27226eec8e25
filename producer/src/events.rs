//! The producer's side of task states and events ([`rask_common::events`]): a `queued` event
//! for each task published, kept in memory and written in one pipeline per
//! [`FLUSH_AT`] tasks and at the end of each publishing call, in the background, so that
//! submitting costs no round trip more. With the `events` setting off, nothing is kept.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rask_common::events::{Event, EventKind, Origin, Recorder, TaskInfo};
use rask_common::{Settings, Store, TaskKey, TaskMessage};

/// Queued events written together, at most.
const FLUSH_AT: usize = 2048;

/// The queued events of one client.
pub(crate) struct Queued {
    /// Writes as this client (`host:pid`).
    recorder: Recorder,
    store: Store,
    buffer: Mutex<Vec<Event>>,
}

impl Queued {
    /// The queued events of a client of `store` with `settings`.
    pub(crate) fn new(store: &Store, settings: &Settings) -> Self {
        let host = hostname::get()
            .map_or_else(|_| "host".to_owned(), |h| h.to_string_lossy().into_owned());
        let by = format!("{host}:{}", std::process::id());
        Queued {
            recorder: Recorder::new(store, settings, Origin::Client(by)),
            store: store.clone(),
            buffer: Mutex::default(),
        }
    }

    /// Notes that `message` is being published (written every [`FLUSH_AT`] tasks).
    pub(crate) fn note(&self, message: &TaskMessage) {
        if !self.recorder.enabled() {
            return;
        }
        let event = Event::new(EventKind::Queued, message.key.clone(), &message.function);
        let full = {
            let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
            buffer.push(event);
            (buffer.len() >= FLUSH_AT).then(|| std::mem::take(&mut *buffer))
        };
        if let Some(events) = full {
            self.spawn_write(events);
        }
    }

    /// Records, in the background, that the tasks of `keys` (with their functions) were
    /// cancelled by this client.
    pub(crate) fn cancelled(&self, keys: impl IntoIterator<Item = (TaskKey, String)>) {
        if !self.recorder.enabled() {
            return;
        }
        let events: Vec<Event> = keys
            .into_iter()
            .map(|(key, function)| Event::new(EventKind::Cancelled, key, function))
            .collect();
        if !events.is_empty() {
            self.spawn_write(events);
        }
    }

    /// Writes, in the background, what was noted and not yet written.
    pub(crate) fn flush(&self) {
        if !self.recorder.enabled() {
            return;
        }
        let events =
            std::mem::take(&mut *self.buffer.lock().unwrap_or_else(PoisonError::into_inner));
        if !events.is_empty() {
            self.spawn_write(events);
        }
    }

    fn spawn_write(&self, events: Vec<Event>) {
        let recorder = self.recorder.clone();
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.write(&store, &events).await {
                tracing::warn!(error = %e, events = events.len(), "could not record queued tasks");
            }
        });
    }
}

impl crate::Monitor {
    /// What is known of each task of `keys`, in order (as [`crate::Client::task_info`], with
    /// no connection to RabbitMQ).
    ///
    /// # Errors
    /// [`crate::Error::Common`] if Redis fails.
    pub async fn tasks_info(&self, keys: &[TaskKey]) -> crate::Result<Vec<TaskInfo>> {
        Ok(rask_common::events::task_info(self.store(), keys).await?)
    }

    /// Up to `count` events of the event stream after entry `after` (exclusive; `None`: from
    /// `since` ago, or from the oldest kept), oldest first (as [`crate::Client::events`]).
    ///
    /// # Errors
    /// [`crate::Error::Common`] if Redis fails.
    pub async fn events(
        &self,
        after: Option<&str>,
        since: Option<Duration>,
        count: usize,
    ) -> crate::Result<Vec<Event>> {
        Ok(rask_common::events::read_events(self.store(), after, since, count).await?)
    }
}
