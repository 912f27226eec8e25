//! Periodic tasks from the client: [`Client::schedule`] and friends add, list, pause, resume
//! and remove the schedules that workers tick ([`rask_common::schedule`]). The client only
//! writes records; workers publish the ticks, so nothing here has to keep running.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rask_common::message::encode_value;
use rask_common::schedule::{store, Missed, Schedule, Timing};
use rask_common::{Task, TaskKey, TaskMessage};

use crate::{Client, Result, TaskOptions};

/// When a schedule ticks and what it does with ticks missed while no worker checked, for
/// [`Client::schedule`].
///
/// ```
/// use std::time::Duration;
/// use rask::{Missed, ScheduleSpec};
///
/// let nightly = ScheduleSpec::cron_in("30 2 * * *", "Europe/Paris")?.missed(Missed::Skip);
/// let often = ScheduleSpec::every(Duration::from_secs(30));
/// # Ok::<(), rask::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    when: When,
    missed: Missed,
}

#[derive(Debug, Clone, PartialEq)]
enum When {
    Cron(Timing),
    Every(Duration),
}

impl ScheduleSpec {
    /// At the times of a cron pattern (5 fields, or 6 with seconds first), in UTC.
    ///
    /// # Errors
    /// [`crate::Error::Common`] ([`rask_common::Error::InvalidSchedule`]) if it does not parse.
    pub fn cron(pattern: &str) -> Result<Self> {
        Ok(ScheduleSpec::from(When::Cron(Timing::cron(pattern, None)?)))
    }

    /// At the times of a cron pattern read in the IANA time zone `tz` (e.g. `Europe/Paris`),
    /// daylight saving time handled as Vixie cron does.
    ///
    /// # Errors
    /// [`crate::Error::Common`] if the pattern does not parse or the zone is unknown.
    pub fn cron_in(pattern: &str, tz: &str) -> Result<Self> {
        Ok(ScheduleSpec::from(When::Cron(Timing::cron(
            pattern,
            Some(tz),
        )?)))
    }

    /// Every `interval`, the first tick one interval after the schedule is added.
    pub fn every(interval: Duration) -> Self {
        ScheduleSpec::from(When::Every(interval))
    }

    /// What to do with ticks that came while no worker checked (default [`Missed::Once`]).
    pub fn missed(mut self, missed: Missed) -> Self {
        self.missed = missed;
        self
    }
}

impl From<When> for ScheduleSpec {
    fn from(when: When) -> Self {
        ScheduleSpec {
            when,
            missed: Missed::default(),
        }
    }
}

/// A schedule as [`Client::schedules`] lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleInfo {
    /// The stored record: name, timing, policy, whether paused, the task it publishes.
    pub schedule: Schedule,
    /// The last tick claimed by a worker, if any.
    pub last_tick: Option<SystemTime>,
    /// The next tick after now (Redis's clock), if the timing has one.
    pub next_tick: Option<SystemTime>,
}

fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl Client {
    /// Runs `task(args)` at every tick of `spec`, under the schedule's `name` (replacing a
    /// schedule of that name, whose ticks already published are not published again). Every
    /// worker with the `schedules` setting on checks the schedules; one of them publishes each
    /// tick, as a task keyed `{function}-{name}-{tick in Unix ms}`.
    ///
    /// # Errors
    /// [`crate::Error::Common`] if the name is not valid; a store error if Redis fails.
    pub async fn schedule<T: Task>(
        &self,
        name: &str,
        spec: ScheduleSpec,
        task: T,
        args: T::Args,
    ) -> Result<()> {
        self.schedule_with(name, spec, task, args, &TaskOptions::default())
            .await
    }

    /// [`Client::schedule`] with options for every tick's task (priority, retries, time
    /// limit; a countdown or eta is refused: the schedule says when).
    ///
    /// # Errors
    /// As [`Client::schedule`].
    pub async fn schedule_with<T: Task>(
        &self,
        name: &str,
        spec: ScheduleSpec,
        task: T,
        args: T::Args,
        options: &TaskOptions,
    ) -> Result<()> {
        let _ = task;
        self.schedule_encoded(name, spec, T::NAME, encode_value(&args)?, options)
            .await
    }

    /// [`Client::schedule_with`] for the function named `function` with arguments already
    /// encoded as a MessagePack tuple (the CLI's way).
    ///
    /// # Errors
    /// As [`Client::schedule`].
    pub async fn schedule_encoded(
        &self,
        name: &str,
        spec: ScheduleSpec,
        function: &str,
        args: Vec<u8>,
        options: &TaskOptions,
    ) -> Result<()> {
        Schedule::check_name(name)?;
        if !options.delay().is_zero() {
            return Err(rask_common::Error::InvalidSchedule(
                "a countdown or eta does not apply to a periodic task: its schedule says when"
                    .into(),
            )
            .into());
        }
        let store = self.store();
        let now = store::now_ms(store).await?;
        let timing = match spec.when {
            When::Cron(timing) => timing,
            When::Every(interval) => Timing::every(interval, now)?,
        };
        // The key is replaced by each tick's own.
        let placeholder = TaskKey::new(format!("schedule-{name}"))?;
        let template = options.apply(
            TaskMessage::new(placeholder, function, args),
            self.settings(),
        );
        // Workers publish the ticks; the pool's queues must exist for them to route to.
        if let Some(pool) = &template.pool {
            self.declare_pool(pool).await?;
        }
        let schedule = Schedule {
            name: name.to_owned(),
            timing,
            missed: spec.missed,
            paused: false,
            template,
            created_ms: now,
        };
        store::put(store, &schedule).await?;
        Ok(())
    }

    /// Every schedule, by name, with its last and next tick.
    ///
    /// # Errors
    /// A store error if Redis fails.
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>> {
        let snapshot = store::snapshot(self.store()).await?;
        Ok(snapshot
            .schedules
            .into_iter()
            .map(|(schedule, last)| {
                let from = last
                    .unwrap_or(0)
                    .max(snapshot.now_ms)
                    .max(schedule.created_ms);
                let next_tick = schedule.timing.next_after(from).ok().flatten().map(time_of);
                ScheduleInfo {
                    schedule,
                    last_tick: last.map(time_of),
                    next_tick,
                }
            })
            .collect())
    }

    /// Removes schedule `name`; whether it existed. A tick already published still runs.
    ///
    /// # Errors
    /// A store error if Redis fails.
    pub async fn unschedule(&self, name: &str) -> Result<bool> {
        Ok(store::remove(self.store(), name).await?)
    }

    /// Pauses schedule `name` (its ticks while paused are skipped); whether it exists.
    ///
    /// # Errors
    /// A store error if Redis fails.
    pub async fn pause_schedule(&self, name: &str) -> Result<bool> {
        Ok(store::set_paused(self.store(), name, true).await?)
    }

    /// Resumes schedule `name` from its next tick; whether it exists.
    ///
    /// # Errors
    /// A store error if Redis fails.
    pub async fn resume_schedule(&self, name: &str) -> Result<bool> {
        Ok(store::set_paused(self.store(), name, false).await?)
    }
}
