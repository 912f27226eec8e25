//! The producer's side of task states and events ([`rask_common::events`]): a `queued` event
//! for each task published (one [`BatchEvent`] for all the calls of a batch message whose
//! keys are of one group), kept in memory and written in one pipeline per [`FLUSH_AT`] tasks
//! and at the end of each publishing call, in the background, so that submitting costs no
//! round trip more. With the `events` setting off, nothing is kept.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rask_common::batch_events::{BatchEvent, BatchStage};
use rask_common::call_keys::group_of;
use rask_common::events::{now_ms, Event, EventKind, Origin, Recorder, TaskInfo};
use rask_common::{Settings, Store, TaskKey, TaskMessage};

/// Queued events written together, at most.
const FLUSH_AT: usize = 2048;

/// The queued events of one client.
pub(crate) struct Queued {
    /// Writes as this client (`host:pid`).
    recorder: Recorder,
    store: Store,
    buffer: Mutex<Buffer>,
}

/// Queued events and batch records not yet written.
#[derive(Default)]
struct Buffer {
    events: Vec<Event>,
    batches: Vec<BatchEvent>,
    /// How many tasks they stand for.
    tasks: usize,
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
        let queued = |key: &TaskKey| Event::new(EventKind::Queued, key.clone(), &message.function);
        let full = {
            let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
            if !message.is_batch() {
                buffer.events.push(queued(&message.key));
            } else if let Some(group) = group_of(&message.calls) {
                buffer.batches.push(BatchEvent {
                    stage: BatchStage::Queued,
                    group: group.to_owned(),
                    function: message.function.clone(),
                    count: u32::try_from(message.calls.len()).unwrap_or(u32::MAX),
                    at: now_ms(),
                    by: None,
                    worker: None,
                    slot: None,
                    attempt: None,
                    runs: Vec::new(),
                });
            } else {
                let events = message.calls.iter().map(|call| queued(&call.key));
                buffer.events.extend(events);
            }
            buffer.tasks += message.calls.len().max(1);
            (buffer.tasks >= FLUSH_AT).then(|| std::mem::take(&mut *buffer))
        };
        if let Some(buffer) = full {
            self.spawn_write(buffer);
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
            self.spawn_write(Buffer {
                events,
                ..Buffer::default()
            });
        }
    }

    /// Writes, in the background, what was noted and not yet written.
    pub(crate) fn flush(&self) {
        if !self.recorder.enabled() {
            return;
        }
        let buffer =
            std::mem::take(&mut *self.buffer.lock().unwrap_or_else(PoisonError::into_inner));
        if buffer.tasks > 0 {
            self.spawn_write(buffer);
        }
    }

    fn spawn_write(&self, buffer: Buffer) {
        let recorder = self.recorder.clone();
        let store = self.store.clone();
        tokio::spawn(async move {
            let Buffer {
                events,
                batches,
                tasks,
            } = buffer;
            if let Err(e) = recorder.write_with(&store, &events, &batches).await {
                tracing::warn!(error = %e, tasks, "could not record queued tasks");
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
