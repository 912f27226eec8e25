//! Supervising the workers of `rask local up`, as Dask's nanny does: [`supervise`] starts the
//! workers as its own children and starts a worker again when it exits abnormally (a crash, a
//! signal, an aborted allocation), after a pause that doubles from 1 s to 30 s while it keeps
//! failing and starts over once it stayed up for a minute.
//!
//! It runs in a process of its own, `rask local supervise` (the command `up` starts, detached,
//! since `up` itself returns), and is the only writer of the workers' records in
//! `DIR/state.json` from then on: each worker's pid, state, restarts and last exit (see
//! [`Supervision`]), which `rask local status` shows. A worker that exits with status 0 was
//! asked to stop and stays stopped; one that exits with 78 (`EX_CONFIG`: its configuration
//! cannot work) stays failed with its last log line, since starting it again would fail the same
//! way. On shutdown (`rask local down` sends SIGTERM) it stops its workers (SIGTERM, SIGKILL after
//! 10 s), records that, and returns.

use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::pid;
use super::pool_spec::PoolWorkers;
use super::spawn::Lifetime;
use super::state::{self, ProcessKind, ProcessRecord, Supervision, WorkerState};
use super::worker::{Worker, WorkerSpec};

/// How often the supervisor looks at its workers.
const POLL: Duration = Duration::from_millis(100);

/// How long the first workers may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long workers get to finish after SIGTERM before SIGKILL, at shutdown.
const WORKER_GRACE: Duration = Duration::from_secs(10);

/// The exit status of a worker whose configuration cannot work (`EX_CONFIG` of sysexits.h).
pub const EXIT_CONFIG: i32 = 78;

/// What [`supervise`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuperviseSpec {
    /// The cluster's folder: `state.json` there must already record the servers.
    pub dir: PathBuf,
    /// How many workers to run.
    pub workers: usize,
    /// The worker binary, e.g. [`sibling_binary`](super::sibling_binary)`("rask-worker")`.
    pub program: PathBuf,
    /// Environment variables for the workers on top of this process's (which they inherit).
    pub env: Vec<(String, String)>,
    /// Extra workers serving one pool each, numbered after the `workers`.
    pub pools: Vec<PoolWorkers>,
}

/// The pause before starting a worker again: 1 s after its first abnormal exit, doubling with
/// each exit that follows quickly, at most 30 s; back to 1 s once a worker stayed up for
/// [`Backoff::RESET_AFTER`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);
    /// How long a worker must have run for its next failure to count as a first one.
    const RESET_AFTER: Duration = Duration::from_secs(60);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The pause after a process that ran for `ran` exited abnormally.
    fn after_exit(&mut self, ran: Duration) -> Duration {
        if ran >= Self::RESET_AFTER {
            self.next = Self::FIRST;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        pause
    }
}

/// One worker and its history.
struct Slot {
    number: usize,
    spec: WorkerSpec,
    process: Option<Worker>,
    started: Instant,
    /// When a restarting worker starts again.
    due: Option<Instant>,
    backoff: Backoff,
    record: Supervision,
    pid: u32,
}

impl Slot {
    fn start(&mut self) -> io::Result<()> {
        let worker = Worker::spawn(&self.spec, Lifetime::Detached)?;
        self.pid = worker.pid();
        self.process = Some(worker);
        self.started = Instant::now();
        self.due = None;
        self.record.state = WorkerState::Starting;
        tracing::info!(worker = self.number, pid = self.pid, "worker started");
        Ok(())
    }

    /// Looks at the worker once: ready, exited (then what next), or due to start again.
    /// Returns whether its record changed.
    fn check(&mut self, now: Instant) -> io::Result<bool> {
        if let Some(due) = self.due {
            if now < due {
                return Ok(false);
            }
            self.record.restarts += 1;
            self.start()?;
            return Ok(true);
        }
        let Some(worker) = self.process.as_mut() else {
            return Ok(false); // stopped or failed for good
        };
        if let Some(status) = worker.try_wait()? {
            let ran = now.duration_since(self.started);
            self.record.last_exit = Some(describe(status));
            self.record.last_error = worker.last_log_line();
            self.process = None;
            self.record.state = match status.code() {
                Some(0) => WorkerState::Stopped,
                Some(EXIT_CONFIG) => WorkerState::Failed,
                _ => {
                    let pause = self.backoff.after_exit(ran);
                    self.due = Some(now + pause);
                    WorkerState::Restarting
                }
            };
            tracing::warn!(
                worker = self.number,
                pid = self.pid,
                exit = self.record.last_exit.as_deref().unwrap_or_default(),
                last_line = self.record.last_error.as_deref().unwrap_or_default(),
                state = ?self.record.state,
                "worker exited"
            );
            return Ok(true);
        }
        if self.record.state == WorkerState::Starting && worker.is_ready() {
            self.record.state = WorkerState::Running;
            return Ok(true);
        }
        Ok(false)
    }

    fn to_record(&self) -> ProcessRecord {
        ProcessRecord {
            kind: ProcessKind::Worker,
            pid: self.pid,
            name: pid::name_of_program(&self.spec.program),
            address: None,
            log: self.spec.log.clone(),
            alive: self.process.is_some(),
            supervision: Some(self.record.clone()),
        }
    }
}

/// How a process ended, in words: `exit code 1`, `killed by signal SIGKILL`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(EXIT_CONFIG), _) => format!("exit code {EXIT_CONFIG} (a configuration error)"),
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("killed by signal {}", signal.as_str()),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}

/// Runs `spec.workers` workers until `shutdown` completes, starting again each one that exits
/// abnormally (see the module docs), and keeps their records in `DIR/state.json` with this
/// process's own. Returns once the workers are stopped.
///
/// # Errors
///
/// Fails if the state file cannot be read or written, a worker cannot be started, or one of the
/// first workers exits or is not ready within 10 s (the error quotes its log); the workers
/// started are stopped first.
pub async fn supervise(spec: &SuperviseSpec, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    // The plain workers, then each pool's: (arguments, extra environment, pools).
    let plain = std::iter::repeat_with(|| (Vec::new(), Vec::new(), Vec::new())).take(spec.workers);
    let pooled = spec.pools.iter().flat_map(|p| {
        std::iter::repeat_with(|| (p.args(), p.env(), vec![p.pool.clone()])).take(p.count)
    });
    let mut slots: Vec<Slot> = plain
        .chain(pooled)
        .zip(1..)
        .map(|((args, extra, pools), number)| Slot {
            number,
            spec: WorkerSpec {
                program: spec.program.clone(),
                args,
                env: spec.env.iter().cloned().chain(extra).collect(),
                log: spec.dir.join("logs").join(format!("worker-{number}.log")),
            },
            process: None,
            started: Instant::now(),
            due: None,
            backoff: Backoff::new(),
            record: Supervision {
                number,
                state: WorkerState::Starting,
                restarts: 0,
                last_exit: None,
                last_error: None,
                pools,
            },
            pid: 0,
        })
        .collect();
    let result = run(spec, &mut slots, shutdown).await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "supervisor stopping its workers after an error");
    }
    stop_all(&mut slots).await;
    // Record the end, unless the cluster's record is gone already.
    if state::read(&spec.dir).ok().flatten().is_some() {
        write(spec, &slots)?;
    }
    result
}

/// Starts the workers, waits until they are ready, then watches them until `shutdown`.
async fn run(
    spec: &SuperviseSpec,
    slots: &mut [Slot],
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    for slot in slots.iter_mut() {
        slot.start()?;
    }
    write(spec, slots)?;
    for slot in slots.iter_mut() {
        if let Some(worker) = slot.process.as_mut() {
            worker.wait_ready(READY_TIMEOUT).await?;
        }
        slot.record.state = WorkerState::Running;
    }
    write(spec, slots)?;
    tracing::info!(workers = slots.len(), "workers ready; supervising");

    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let mut changed = false;
        for slot in slots.iter_mut() {
            match slot.check(now) {
                Ok(c) => changed |= c,
                // A worker that cannot be started now (e.g. the binary is being rebuilt) is
                // tried again after the next pause.
                Err(e) => {
                    tracing::warn!(worker = slot.number, error = %e, "cannot start worker");
                    let pause = slot.backoff.after_exit(Duration::ZERO);
                    slot.due = Some(now + pause);
                    slot.record.state = WorkerState::Restarting;
                    slot.record.last_error = Some(e.to_string());
                    changed = true;
                }
            }
        }
        if changed {
            write(spec, slots)?;
        }
    }
}

/// Stops every worker still running: SIGTERM to all, SIGKILL to those still there after
/// [`WORKER_GRACE`].
async fn stop_all(slots: &mut [Slot]) {
    for slot in slots.iter_mut() {
        slot.due = None;
        if let Some(worker) = slot.process.as_mut() {
            if let Err(e) = worker.signal_term() {
                tracing::warn!(worker = slot.number, error = %e, "cannot send SIGTERM");
            }
        }
    }
    let stops = slots.iter_mut().map(|slot| async move {
        let Some(worker) = slot.process.as_mut() else {
            return;
        };
        let status = match worker.wait(WORKER_GRACE).await {
            Ok(Some(status)) => Ok(status),
            _ => worker.kill().await,
        };
        match status {
            Ok(status) => slot.record.last_exit = Some(describe(status)),
            Err(e) => tracing::warn!(worker = slot.number, error = %e, "cannot stop worker"),
        }
        slot.process = None;
        slot.record.state = WorkerState::Stopped;
    });
    futures::future::join_all(stops).await;
}

/// Replaces the workers' and the supervisor's records in `DIR/state.json` (the servers' stay).
fn write(spec: &SuperviseSpec, slots: &[Slot]) -> io::Result<()> {
    let mut state = state::read(&spec.dir)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no local cluster is recorded in {} to supervise workers for",
                spec.dir.display()
            ),
        )
    })?;
    let me = std::process::id();
    state
        .processes
        .retain(|r| !matches!(r.kind, ProcessKind::Worker | ProcessKind::Supervisor));
    state.processes.push(ProcessRecord {
        kind: ProcessKind::Supervisor,
        pid: me,
        name: pid::name(me).unwrap_or_default(),
        address: None,
        log: spec.dir.join("logs").join("supervisor.log"),
        alive: true,
        supervision: None,
    });
    state.processes.extend(slots.iter().map(Slot::to_record));
    state::write(&state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_to_30_s_and_starts_over_after_a_minute_up() {
        let mut backoff = Backoff::new();
        let quick = Duration::from_millis(200);
        let pauses: Vec<u64> = (0..7)
            .map(|_| backoff.after_exit(quick).as_secs())
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff.after_exit(Duration::from_secs(61)).as_secs(), 1);
        assert_eq!(backoff.after_exit(quick).as_secs(), 2);
    }

    #[test]
    fn exits_are_described_by_code_or_signal() {
        assert_eq!(describe(ExitStatus::from_raw(1 << 8)), "exit code 1");
        assert_eq!(
            describe(ExitStatus::from_raw(78 << 8)),
            "exit code 78 (a configuration error)"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(9)),
            "killed by signal SIGKILL"
        );
    }

    /// One worker that runs the shell script `body`.
    fn script_spec(dir: &std::path::Path, body: &str) -> SuperviseSpec {
        use std::os::unix::fs::PermissionsExt;
        let program = dir.join("worker.sh");
        std::fs::write(&program, format!("#!/bin/sh\n{body}\n")).expect("script");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        SuperviseSpec {
            dir: dir.to_owned(),
            workers: 1,
            program,
            env: Vec::new(),
            pools: Vec::new(),
        }
    }

    /// A cluster folder whose record has no servers, for supervising scripts.
    fn empty_cluster(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "rask-supervisor-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        state::write(&state::ClusterState {
            dir: dir.clone(),
            amqp_url: String::new(),
            redis_url: String::new(),
            processes: Vec::new(),
        })
        .expect("state");
        dir
    }

    /// The record of worker 1, once `done` holds for it.
    async fn worker_record(
        dir: &std::path::Path,
        done: impl Fn(&Supervision) -> bool,
    ) -> Supervision {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = state::read(dir).expect("read").expect("recorded");
            let record = state
                .processes
                .iter()
                .find_map(|r| r.supervision.clone())
                .filter(|s| done(s));
            if let Some(record) = record {
                return record;
            }
            assert!(Instant::now() < deadline, "gave up waiting: {state:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_worker_exiting_with_78_is_failed_with_its_last_line_and_not_restarted() {
        let dir = empty_cluster("config");
        // Ready, then a permanent configuration error.
        let spec = script_spec(
            &dir,
            "echo worker ready; sleep 0.2; echo 'error: max_priority differs' >&2; exit 78",
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let supervisor = tokio::spawn({
            let spec = spec.clone();
            async move {
                supervise(&spec, async move {
                    let _ = stopped.await;
                })
                .await
            }
        });
        let failed = worker_record(&dir, |s| s.state == WorkerState::Failed).await;
        assert_eq!(failed.restarts, 0);
        assert_eq!(
            failed.last_exit.as_deref(),
            Some("exit code 78 (a configuration error)")
        );
        assert_eq!(
            failed.last_error.as_deref(),
            Some("error: max_priority differs")
        );
        // Well past the first pause: still failed, never started again.
        tokio::time::sleep(Backoff::FIRST * 2).await;
        let again = worker_record(&dir, |_| true).await;
        assert_eq!((again.state, again.restarts), (WorkerState::Failed, 0));
        stop.send(()).expect("supervisor listens");
        supervisor.await.expect("joins").expect("supervises");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_crashing_worker_is_started_again_after_a_pause() {
        let dir = empty_cluster("crash");
        // Every process is ready at once; the first one crashes, the next ones stay up.
        let marker = dir.join("crashed-once");
        let script = format!(
            "echo worker ready; if [ ! -e {m} ]; then touch {m}; kill -9 $$; fi; exec sleep 30",
            m = marker.display()
        );
        let spec = script_spec(&dir, &script);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let supervisor = tokio::spawn({
            let spec = spec.clone();
            async move {
                supervise(&spec, async move {
                    let _ = stopped.await;
                })
                .await
            }
        });
        let restarted =
            worker_record(&dir, |s| s.restarts == 1 && s.state == WorkerState::Running).await;
        assert_eq!(
            restarted.last_exit.as_deref(),
            Some("killed by signal SIGKILL")
        );
        let state = state::read(&dir).expect("read").expect("recorded");
        let worker = state
            .processes
            .iter()
            .find(|r| r.kind == ProcessKind::Worker)
            .expect("a worker record");
        assert!(pid::is_alive(worker.pid), "the new process runs");
        stop.send(()).expect("supervisor listens");
        supervisor.await.expect("joins").expect("supervises");
        assert!(!pid::is_alive(worker.pid), "stopped on shutdown");
        let stopped = worker_record(&dir, |s| s.state == WorkerState::Stopped).await;
        assert_eq!(stopped.restarts, 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
