//! The worker's side of task states and events ([`rask_common::events`]): which concurrency
//! slot each run takes, and the events of runs, kept in memory and written by a flusher every
//! [`FLUSH`] in one pipeline (an `HSET` of records and a stream entry per 512 events), with a
//! `started` record for each run older than [`FLUSH`], so that a long run shows as running; a
//! short run records only its end, which carries its start. A few large writes cost Redis less
//! per task than a few commands with every batch of results (each command's own cost is shared
//! by many more events); a record may then reach Redis up to [`FLUSH`] after its result. A
//! dead-lettered message's event goes with the batch that stores its failure instead
//! (`writer/store.rs`), so that its record is there with the failure.
//!
//! A batch message whose calls' keys are of one group ([`rask_common::call_keys`]) is one run
//! ([`Events::start_batch`]): it takes one slot, and its calls' ends are kept in the run and
//! recorded as one [`BatchEvent`] when it ends (one record and one stream item for all the
//! calls), so that a call costs no record of its own.
//!
//! With the `events` setting off, [`Events::start`] returns `None` and nothing else happens.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rask_common::batch_events::{BatchEvent, BatchStage, CallRun};
use rask_common::events::{now_ms, shorten_error, Event, EventKind, Origin, Recorder};
use rask_common::outcome::Outcome;
use rask_common::{Settings, Store, TaskKey, TaskMessage};
use tokio_util::sync::CancellationToken;

/// How often the flusher runs, and how old a run is before its start is recorded on its own.
const FLUSH: std::time::Duration = rask_common::events::WORKER_FLUSH;

/// What a run runs.
enum Subject {
    /// One task.
    Task(TaskKey),
    /// The calls of a batch message, of this group.
    Batch { group: String, count: u32 },
}

/// A run not yet ended, in its slot.
struct Running {
    subject: Subject,
    function: String,
    attempt: u32,
    /// When it started (Unix ms, and for its duration).
    at: u64,
    since: Instant,
    /// Whether its `started` event was written.
    recorded: bool,
}

impl Running {
    /// Its `started` event or batch record, with its slot and attempt.
    fn started(&self, slot: u32, pending: &mut Pending) {
        match &self.subject {
            Subject::Task(key) => {
                let mut event = Event::new(EventKind::Started, key.clone(), self.function.clone());
                event.at = self.at;
                event.slot = Some(slot);
                event.attempt = Some(self.attempt);
                pending.events.push(event);
            }
            Subject::Batch { group, count } => pending.batches.push(BatchEvent {
                stage: BatchStage::Started,
                group: group.clone(),
                function: self.function.clone(),
                count: *count,
                at: self.at,
                by: None,
                worker: None,
                slot: Some(slot),
                attempt: Some(self.attempt),
                runs: Vec::new(),
            }),
        }
    }
}

/// Events and batch records not yet written.
#[derive(Default)]
struct Pending {
    events: Vec<Event>,
    batches: Vec<BatchEvent>,
}

/// The events of one worker connection.
pub(crate) struct Events {
    recorder: Recorder,
    store: Store,
    /// Runs in progress, by slot number: a run takes the lowest free slot.
    slots: Mutex<Vec<Option<Running>>>,
    /// Events and batch records not yet written, for the flusher.
    done: Mutex<Pending>,
    /// Events to write with the next batch of results (dead letters).
    urgent: Mutex<Vec<Event>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Events {
    /// The events of worker `worker` writing to `store` as `settings` say.
    pub(crate) fn new(store: &Store, settings: &Settings, worker: &str) -> Self {
        Events {
            recorder: Recorder::new(store, settings, Origin::Worker(worker.to_owned())),
            store: store.clone(),
            slots: Mutex::default(),
            done: Mutex::default(),
            urgent: Mutex::default(),
        }
    }

    /// Starts recording the run of `message` (`None` when events are off); the run takes the
    /// lowest free slot number until it ends.
    pub(crate) fn start(&self, message: &TaskMessage) -> Option<Run<'_>> {
        if !self.recorder.enabled() {
            return None;
        }
        let slot = self.take_slot(Subject::Task(message.key.clone()), message);
        Some(Run {
            events: self,
            slot,
            ended: false,
        })
    }

    /// Starts recording the run of the batch `template` (a batch message without its calls)
    /// whose `count` calls have keys of `group` (`None` when events are off); the run takes
    /// the lowest free slot number until it ends.
    pub(crate) fn start_batch(
        &self,
        template: &TaskMessage,
        group: &str,
        count: usize,
    ) -> Option<BatchRun<'_>> {
        if !self.recorder.enabled() {
            return None;
        }
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let subject = Subject::Batch {
            group: group.to_owned(),
            count,
        };
        let slot = self.take_slot(subject, template);
        let runs = vec![None; count as usize];
        Some(BatchRun {
            events: self,
            slot,
            runs,
            ended: false,
        })
    }

    /// Takes the lowest free slot for a run of `subject` (of `message`'s function and
    /// attempt), starting now.
    fn take_slot(&self, subject: Subject, message: &TaskMessage) -> usize {
        let running = Running {
            subject,
            function: message.function.clone(),
            attempt: message.attempt,
            at: now_ms(),
            since: Instant::now(),
            recorded: false,
        };
        let mut slots = lock(&self.slots);
        let slot = match slots.iter().position(Option::is_none) {
            Some(free) => {
                slots[free] = Some(running);
                free
            }
            None => {
                slots.push(Some(running));
                slots.len() - 1
            }
        };
        slot
    }

    /// Ends the run in `slot`: frees the slot and returns the run.
    fn end(&self, slot: usize) -> Option<Running> {
        lock(&self.slots).get_mut(slot).and_then(Option::take)
    }

    /// The recorder the writer adds the events it takes with.
    pub(crate) fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Records `event` for the next write.
    pub(crate) fn push(&self, event: Event) {
        if self.recorder.enabled() {
            lock(&self.done).events.push(event);
        }
    }

    /// Records that the message of task `key` (of `function`, if known) was dead-lettered
    /// for `reason` (written with the batch that stores its failure).
    pub(crate) fn dead_lettered(&self, key: &TaskKey, function: Option<&str>, reason: &str) {
        if !self.recorder.enabled() {
            return;
        }
        let event = Event::new(
            EventKind::DeadLettered,
            key.clone(),
            function.unwrap_or("-"),
        );
        lock(&self.urgent).push(event.with_error(reason));
    }

    /// The events to write with the writer's next batch of results.
    pub(crate) fn take(&self) -> Vec<Event> {
        if !self.recorder.enabled() {
            return Vec::new();
        }
        std::mem::take(&mut *lock(&self.urgent))
    }

    /// Every event and batch record not yet written.
    fn take_all(&self) -> Pending {
        let mut pending = std::mem::take(&mut *lock(&self.done));
        pending.events.append(&mut lock(&self.urgent));
        pending
    }

    /// Writes `pending` (a warning if Redis fails: events are not worth failing a task for).
    async fn write(&self, pending: Pending) {
        let Pending { events, batches } = pending;
        if let Err(e) = self
            .recorder
            .write_with(&self.store, &events, &batches)
            .await
        {
            let batches = batches.len();
            tracing::warn!(error = %e, events = events.len(), batches, "could not record task events");
        }
    }

    /// Writes, every [`FLUSH`] until `stop`, the events of runs that ended and the starts of
    /// runs older than [`FLUSH`]; then writes what is left (cancel `stop` once no task runs any
    /// more and the writer is done).
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
            let mut pending = self.take_all();
            {
                let now = Instant::now();
                let mut slots = lock(&self.slots);
                for (slot, run) in slots.iter_mut().enumerate() {
                    let Some(run) = run else { continue };
                    if !run.recorded && now.duration_since(run.since) >= FLUSH {
                        run.recorded = true;
                        let slot = u32::try_from(slot).unwrap_or(u32::MAX);
                        run.started(slot, &mut pending);
                    }
                }
            }
            self.write(pending).await;
        }
        let pending = self.take_all();
        self.write(pending).await;
    }
}

/// A run being recorded; dropped without [`Run::finished`] or [`Run::retried`] (the delivery
/// went back to the queue), it only frees its slot.
pub(crate) struct Run<'a> {
    events: &'a Events,
    slot: usize,
    ended: bool,
}

impl Run<'_> {
    /// The run's end event of `kind`, with its start, duration and `error`.
    fn ended(&mut self, kind: EventKind, error: Option<&str>) -> Option<Event> {
        self.ended = true;
        let run = self.events.end(self.slot)?;
        let duration = u64::try_from(run.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        let slot = u32::try_from(self.slot).unwrap_or(u32::MAX);
        let Running {
            subject: Subject::Task(key),
            function,
            attempt,
            at: started,
            ..
        } = run
        else {
            return None; // a batch's run ends through `BatchRun`
        };
        let mut event = Event::new(kind, key, function);
        event.slot = Some(slot);
        event.attempt = Some(attempt);
        event.started = Some(started);
        event.duration_ms = Some(duration);
        Some(match error {
            Some(error) => event.with_error(error),
            None => event,
        })
    }

    /// The run ended with `outcome` (to be stored).
    pub(crate) fn finished(mut self, outcome: &Outcome) {
        if let Some(event) = self.ended(EventKind::of_outcome(outcome), error_of(outcome)) {
            self.events.push(event);
        }
    }

    /// The run failed with `outcome` and is retried.
    pub(crate) fn retried(mut self, outcome: &Outcome) {
        if let Some(event) = self.ended(EventKind::Retried, error_of(outcome)) {
            self.events.push(event);
        }
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.events.end(self.slot);
        }
    }
}

/// The failure's message of `outcome`, if it is one.
fn error_of(outcome: &Outcome) -> Option<&str> {
    match outcome {
        Outcome::Value(_) => None,
        Outcome::Failure(f) => Some(f.message.as_str()),
    }
}

/// The run of a batch message being recorded (see the module docs): each call's end is kept
/// here, and [`BatchRun::end`] records them all at once. Dropped without `end` (the delivery
/// went back to the queue), it only frees its slot.
pub(crate) struct BatchRun<'a> {
    events: &'a Events,
    slot: usize,
    /// How each call ended, by index (`None`: not run).
    runs: Vec<Option<CallRun>>,
    ended: bool,
}

/// When a call of a batch started.
#[derive(Clone, Copy)]
pub(crate) struct CallStart {
    at: u64,
    since: Instant,
}

impl CallStart {
    /// Now.
    pub(crate) fn now() -> Self {
        CallStart {
            at: now_ms(),
            since: Instant::now(),
        }
    }
}

impl BatchRun<'_> {
    /// Call `index`, started at `start`, ended with `outcome`: stored (`retried`: sent back
    /// to run again).
    pub(crate) fn call_ended(
        &mut self,
        index: usize,
        start: CallStart,
        outcome: &Outcome,
        retried: bool,
    ) {
        let Some(run) = self.runs.get_mut(index) else {
            return;
        };
        let kind = if retried {
            EventKind::Retried
        } else {
            EventKind::of_outcome(outcome)
        };
        *run = Some(CallRun {
            kind,
            started: start.at,
            duration_ms: u64::try_from(start.since.elapsed().as_millis()).unwrap_or(u64::MAX),
            error: error_of(outcome).map(shorten_error),
        });
    }

    /// The batch's run ended: frees its slot and records the calls' ends as one record.
    pub(crate) fn end(mut self) {
        self.ended = true;
        let Some(run) = self.events.end(self.slot) else {
            return;
        };
        let Subject::Batch { group, count } = run.subject else {
            return;
        };
        let batch = BatchEvent {
            stage: BatchStage::Ended,
            group,
            function: run.function,
            count,
            at: run.at,
            by: None,
            worker: None,
            slot: Some(u32::try_from(self.slot).unwrap_or(u32::MAX)),
            attempt: Some(run.attempt),
            runs: std::mem::take(&mut self.runs),
        };
        lock(&self.events.done).batches.push(batch);
    }
}

impl Drop for BatchRun<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.events.end(self.slot);
        }
    }
}
