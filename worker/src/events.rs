//! The worker's side of task states and events ([`rask_common::events`]): which concurrency
//! slot each run takes, and the events of runs, kept in memory until the result writer adds
//! them to the pipeline of the batch it stores (`writer/store.rs`), so that recording costs no
//! round trip. A flusher writes, every [`FLUSH`], what the writer has not taken (retries, which store
//! no result) and a `started` record for each run older than [`FLUSH`], so that a long run shows
//! as running; a short run records only its end, which carries its start.
//!
//! With the `events` setting off, [`Events::start`] returns `None` and nothing else happens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rask_common::events::{now_ms, Event, EventKind, Recorder};
use rask_common::outcome::Outcome;
use rask_common::{Settings, Store, TaskMessage};
use tokio_util::sync::CancellationToken;

/// How often the flusher runs, and how old a run is before its start is recorded on its own.
const FLUSH: Duration = Duration::from_millis(250);

/// A run not yet ended.
struct Running {
    event: Event,
    since: Instant,
    /// Whether its `started` event was written.
    recorded: bool,
}

/// The events of one worker connection.
pub(crate) struct Events {
    recorder: Recorder,
    store: Store,
    worker: String,
    /// Free slot numbers (lowest first) and the next never used.
    lanes: Mutex<(Vec<u32>, u32)>,
    /// Runs in progress, by run number.
    running: Mutex<HashMap<u64, Running>>,
    next_run: std::sync::atomic::AtomicU64,
    /// Events not yet written.
    done: Mutex<Vec<Event>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Events {
    /// The events of worker `worker` writing to `store` as `settings` say.
    pub(crate) fn new(store: &Store, settings: &Settings, worker: &str) -> Self {
        Events {
            recorder: Recorder::new(store, settings),
            store: store.clone(),
            worker: worker.to_owned(),
            lanes: Mutex::default(),
            running: Mutex::default(),
            next_run: std::sync::atomic::AtomicU64::new(0),
            done: Mutex::default(),
        }
    }

    /// Starts recording the run of `message` (`None` when events are off); the run takes the
    /// lowest free slot number until it ends.
    pub(crate) fn start(&self, message: &TaskMessage) -> Option<Run<'_>> {
        if !self.recorder.enabled() {
            return None;
        }
        let slot = {
            let mut lanes = lock(&self.lanes);
            lanes.0.pop().unwrap_or_else(|| {
                lanes.1 += 1;
                lanes.1 - 1
            })
        };
        let mut event = Event::new(EventKind::Started, message.key.clone(), &message.function);
        event.worker = Some(self.worker.clone());
        event.slot = Some(slot);
        event.attempt = Some(message.attempt);
        let id = self
            .next_run
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let since = Instant::now();
        lock(&self.running).insert(
            id,
            Running {
                event,
                since,
                recorded: false,
            },
        );
        Some(Run {
            events: self,
            id,
            since,
        })
    }

    /// Ends run `id`: frees its slot and returns its start event.
    fn end(&self, id: u64) -> Option<Event> {
        let running = lock(&self.running).remove(&id)?;
        if let Some(slot) = running.event.slot {
            let mut lanes = lock(&self.lanes);
            lanes.0.push(slot);
            // Lowest first.
            lanes.0.sort_unstable_by(|a, b| b.cmp(a));
        }
        Some(running.event)
    }

    /// The recorder the writer adds the events it takes with.
    pub(crate) fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Records `event` for the next write.
    pub(crate) fn push(&self, event: Event) {
        if self.recorder.enabled() {
            lock(&self.done).push(event);
        }
    }

    /// Records that the message of task `key` (of `function`, if known) was dead-lettered
    /// for `reason` (written with the batch that stores its failure).
    pub(crate) fn dead_lettered(
        &self,
        key: &rask_common::TaskKey,
        function: Option<&str>,
        reason: &str,
    ) {
        let mut event = Event::new(
            EventKind::DeadLettered,
            key.clone(),
            function.unwrap_or("-"),
        );
        event.worker = Some(self.worker.clone());
        self.push(event.with_error(reason));
    }

    /// The events not yet written (for the writer's next batch).
    pub(crate) fn take(&self) -> Vec<Event> {
        if !self.recorder.enabled() {
            return Vec::new();
        }
        std::mem::take(&mut *lock(&self.done))
    }

    /// Writes `events` (a warning if Redis fails: events are not worth failing a task for).
    pub(crate) async fn write(&self, events: Vec<Event>) {
        if let Err(e) = self.recorder.write(&self.store, &events).await {
            tracing::warn!(error = %e, events = events.len(), "could not record task events");
        }
    }

    /// Writes, every [`FLUSH`] until `stop`, the events the writer has not taken and the
    /// starts of runs older than [`FLUSH`]; then writes what is left.
    pub(crate) async fn flush_until(self: Arc<Self>, stop: CancellationToken) {
        if !self.recorder.enabled() {
            return;
        }
        let mut tick = tokio::time::interval(FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let mut events = self.take();
            {
                let now = Instant::now();
                let mut running = lock(&self.running);
                for run in running.values_mut() {
                    if !run.recorded && now.duration_since(run.since) >= FLUSH {
                        run.recorded = true;
                        events.push(run.event.clone());
                    }
                }
            }
            self.write(events).await;
        }
        let events = self.take();
        self.write(events).await;
    }
}

/// A run being recorded; dropped without [`Run::finished`] or [`Run::retried`] (the delivery
/// went back to the queue), it only frees its slot.
pub(crate) struct Run<'a> {
    events: &'a Events,
    id: u64,
    since: Instant,
}

impl Run<'_> {
    /// The run's end event of `kind`, with its start, duration and `error`.
    fn ended(&self, kind: EventKind, error: Option<&str>) -> Option<Event> {
        let mut event = self.events.end(self.id)?;
        event.started = Some(event.at);
        event.duration_ms = Some(u64::try_from(self.since.elapsed().as_millis()).unwrap_or(0));
        event.kind = kind;
        event.at = now_ms();
        Some(match error {
            Some(error) => event.with_error(error),
            None => event,
        })
    }

    /// The run ended with `outcome` (to be stored).
    pub(crate) fn finished(self, outcome: &Outcome) {
        let error = match outcome {
            Outcome::Value(_) => None,
            Outcome::Failure(f) => Some(f.message.as_str()),
        };
        if let Some(event) = self.ended(EventKind::of_outcome(outcome), error) {
            self.events.push(event);
        }
    }

    /// The run failed with `outcome` and is retried.
    pub(crate) fn retried(self, outcome: &Outcome) {
        let error = match outcome {
            Outcome::Value(_) => None,
            Outcome::Failure(f) => Some(f.message.as_str()),
        };
        if let Some(event) = self.ended(EventKind::Retried, error) {
            self.events.push(event);
        }
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        self.events.end(self.id);
    }
}
