//! Working with a local cluster recorded in `DIR/state.json` by a previous
//! command: `rask local status` and `rask local down`. These hold no child
//! handles, only pids, so every process is checked by name before it is
//! signalled (see [`pid`](super::pid)).

use std::io;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::pid;
use super::spawn::Spawned;
use super::state::{self, ClusterState, ProcessKind, ProcessRecord};

/// How long workers get to finish after SIGTERM before SIGKILL.
const WORKER_GRACE: Duration = Duration::from_secs(10);

/// How long each server gets to stop after SIGTERM before SIGKILL.
const SERVER_GRACE: Duration = Duration::from_secs(30);

/// How long the supervisor gets to stop after SIGTERM before SIGKILL: it
/// gives its workers [`WORKER_GRACE`] first.
const SUPERVISOR_GRACE: Duration = Duration::from_secs(15);

/// Stops exactly the processes recorded in `DIR/state.json`: the workers'
/// supervisor first, so that it starts no worker again (it stops its workers:
/// SIGTERM, SIGKILL after 10 s), then any worker still running (the same
/// way), then Redis, then RabbitMQ (each SIGTERM, SIGKILL after 30 s); then
/// deletes the record. Returns the records, with `alive` telling whether each
/// was still running. A process whose pid now belongs to another program is
/// left alone.
///
/// # Errors
///
/// `NotFound` if no cluster is recorded in `dir`; an error if a process
/// cannot be stopped (the record is then kept, so `down` can be retried).
pub async fn down(dir: &Path) -> io::Result<Vec<ProcessRecord>> {
    let first = read_recorded(dir)?;
    let mut supervisors = Vec::new();
    for record in first
        .processes
        .iter()
        .filter(|r| r.kind == ProcessKind::Supervisor)
    {
        let mut record = record.clone();
        record.alive = pid::is_alive_as(record.pid, &record.name);
        if record.alive {
            stop_record(&record, SUPERVISOR_GRACE).await?;
        }
        supervisors.push(record);
    }
    // Read again: the supervisor recorded how its workers ended, and which
    // processes run them now.
    let mut state = state::read(dir)?.unwrap_or(first);
    for record in &mut state.processes {
        record.alive = match supervisors.iter().find(|s| s.pid == record.pid) {
            Some(supervisor) => supervisor.alive, // as it was before this stopped it
            None => pid::is_alive_as(record.pid, &record.name),
        };
    }
    let workers = state
        .processes
        .iter()
        .filter(|r| r.kind == ProcessKind::Worker && r.alive);
    let stops = workers.map(|record| stop_record(record, WORKER_GRACE));
    for result in futures::future::join_all(stops).await {
        result?;
    }
    for kind in [ProcessKind::Redis, ProcessKind::RabbitMq] {
        for record in state.processes.iter().filter(|r| r.kind == kind && r.alive) {
            stop_record(record, SERVER_GRACE).await?;
        }
    }
    state::remove(dir)?;
    tracing::info!(dir = %dir.display(), "local cluster stopped");
    Ok(state.processes)
}

/// The processes recorded in `DIR/state.json`, each with `alive` checked
/// now.
///
/// # Errors
///
/// `NotFound` if no cluster is recorded in `dir`; an error if the record
/// cannot be read.
pub fn status(dir: &Path) -> io::Result<ClusterState> {
    let mut state = read_recorded(dir)?;
    for record in &mut state.processes {
        record.alive = pid::is_alive_as(record.pid, &record.name);
    }
    Ok(state)
}

/// Fails if a cluster recorded in `dir` still runs; forgets a record whose
/// processes are all gone (e.g. after a reboot).
pub(super) fn ensure_not_running(dir: &Path) -> io::Result<()> {
    let Some(state) = state::read(dir)? else {
        return Ok(());
    };
    let running: Vec<String> = state
        .processes
        .iter()
        .filter(|r| pid::is_alive_as(r.pid, &r.name))
        .map(|r| r.pid.to_string())
        .collect();
    if running.is_empty() {
        tracing::warn!(dir = %dir.display(), "forgetting a stale record of a local cluster that no longer runs");
        return state::remove(dir);
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "a local cluster is already running in {} (pids {}); stop it with `rask local down --dir {}`",
            dir.display(),
            running.join(", "),
            dir.display()
        ),
    ))
}

/// Stops the supervisor `up` started (SIGTERM; SIGKILL after
/// [`SUPERVISOR_GRACE`]) and then any worker recorded in `dir` that still
/// runs (a supervisor killed outright leaves its workers behind).
///
/// # Errors
///
/// Fails if a process cannot be stopped.
pub(super) async fn stop_supervised(dir: &Path, supervisor: &mut Spawned) -> io::Result<()> {
    if supervisor.try_wait()?.is_none() {
        let _ = pid::send(supervisor.pid(), Signal::SIGTERM);
        if supervisor.wait_timeout(SUPERVISOR_GRACE).await?.is_none() {
            let _ = pid::send(supervisor.pid(), Signal::SIGKILL);
            supervisor.wait_timeout(SUPERVISOR_GRACE).await?;
        }
    }
    let Some(state) = state::read(dir)? else {
        return Ok(());
    };
    for record in state
        .processes
        .iter()
        .filter(|r| r.kind == ProcessKind::Worker)
    {
        if pid::is_alive_as(record.pid, &record.name) {
            stop_record(record, WORKER_GRACE).await?;
        }
    }
    Ok(())
}

/// The recorded state, or `NotFound` with a clear message.
fn read_recorded(dir: &Path) -> io::Result<ClusterState> {
    state::read(dir)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no local cluster is recorded in {} ({} does not exist)",
                dir.display(),
                state::path(dir).display()
            ),
        )
    })
}

/// Stops one recorded process: SIGTERM, SIGKILL after `grace`.
async fn stop_record(record: &ProcessRecord, grace: Duration) -> io::Result<()> {
    let what = format!("{:?} (pid {})", record.kind, record.pid);
    let forced = pid::terminate(record.pid, &what, grace).await?;
    tracing::info!(process = %what, forced, "stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_recorded_means_not_found_and_stale_records_are_forgotten() {
        let dir =
            std::env::temp_dir().join(format!("rask-cluster-stale-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        assert_eq!(
            status(&dir).expect_err("none").kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            down(&dir).await.expect_err("none").kind(),
            io::ErrorKind::NotFound
        );

        // A record whose pid now belongs to another program (this test) is
        // not running, and down leaves that program alone.
        let stale = ClusterState {
            dir: dir.clone(),
            amqp_url: String::new(),
            redis_url: String::new(),
            processes: vec![ProcessRecord {
                kind: ProcessKind::Worker,
                pid: std::process::id(),
                name: "surely-not-this".into(),
                address: None,
                log: dir.join("logs/worker-1.log"),
                alive: true,
                supervision: None,
            }],
        };
        state::write(&stale).expect("write");
        assert!(!status(&dir).expect("status").processes[0].alive);
        ensure_not_running(&dir).expect("stale record forgotten");
        assert_eq!(state::read(&dir).expect("read"), None);

        state::write(&stale).expect("write");
        let stopped = down(&dir).await.expect("down");
        assert!(!stopped[0].alive);
        assert_eq!(state::read(&dir).expect("read"), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
