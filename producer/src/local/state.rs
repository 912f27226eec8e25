//! The record of a running local cluster, `DIR/state.json`: which processes
//! `rask local up` started, so that a later `down` or `status` (another
//! invocation, holding no child handles) can find them.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The state file's name inside the cluster's folder.
const STATE_FILE: &str = "state.json";

/// What a recorded process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessKind {
    /// The RabbitMQ node (its Erlang VM).
    #[serde(rename = "rabbitmq")]
    RabbitMq,
    /// The Redis server.
    Redis,
    /// A `rask-worker`.
    Worker,
    /// The `rask local supervise` process that started the workers and restarts them when they
    /// exit abnormally.
    Supervisor,
}

/// One process of a local cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// What it is.
    pub kind: ProcessKind,
    /// Its pid (for RabbitMQ the Erlang VM's, not its start script's).
    pub pid: u32,
    /// Its name as the kernel reported it at start (e.g. `beam.smp`), so a
    /// pid reused by an unrelated process is never taken for it. Empty if
    /// unknown, which disables that check.
    pub name: String,
    /// Where clients reach it: the AMQP or Redis URL; `None` for workers.
    pub address: Option<String>,
    /// Its log file.
    pub log: PathBuf,
    /// Whether it was running when this record was made or last checked:
    /// `true` as `up` writes it; [`status`](super::status) checks it again;
    /// [`down`](super::down) reports whether it was still running when
    /// stopped.
    #[serde(default)]
    pub alive: bool,
    /// For a worker started by the supervisor: its number and how it is doing. `None` for
    /// servers, the supervisor, and workers recorded before supervision existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervision: Option<Supervision>,
}

/// A supervised worker as its supervisor last saw it (see [`supervise`](super::supervise)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervision {
    /// The worker's number, from 1; its log is `logs/worker-N.log` whichever process runs it.
    pub number: usize,
    /// What it is doing.
    pub state: WorkerState,
    /// How many times it was started again after exiting abnormally.
    pub restarts: u32,
    /// How its last process ended, e.g. `killed by signal SIGKILL`; `None` before any exit.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// The last line its last process logged before it ended; `None` before any exit.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The pools it was started to serve (`--pools`); empty (not written) for a worker serving
    /// the pools of its settings (the default pool unless `RASK_POOLS` says otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<rask_common::Pool>,
}

/// What a supervised worker is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Started, not consuming yet.
    Starting,
    /// Consuming (it logged that it is ready).
    Running,
    /// Exited abnormally; started again after a pause (1 s, doubling to 30 s).
    Restarting,
    /// Exited with status 0 (a graceful shutdown someone asked for); not started again.
    Stopped,
    /// Exited with status 78 (`EX_CONFIG`): its configuration cannot work, so starting it again
    /// would fail the same way; not started again.
    Failed,
}

/// A local cluster as recorded in its folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The cluster's folder (data, logs, this record).
    pub dir: PathBuf,
    /// The AMQP URL of its RabbitMQ, for producers and workers.
    pub amqp_url: String,
    /// The URL of its Redis.
    pub redis_url: String,
    /// Every process started, in start order.
    pub processes: Vec<ProcessRecord>,
}

/// `DIR/state.json`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// The recorded state, or `None` if nothing is recorded in `dir`.
///
/// # Errors
///
/// Fails if the file exists but cannot be read or parsed.
pub(crate) fn read(dir: &Path) -> io::Result<Option<ClusterState>> {
    let path = path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            ))
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a valid state file: {e}", path.display()),
        )
    })
}

/// Writes the state atomically (a temporary file renamed over the old one),
/// so a reader never sees half a file.
///
/// # Errors
///
/// Fails if the folder is not writable.
pub(crate) fn write(state: &ClusterState) -> io::Result<()> {
    let path = path(&state.dir);
    let temporary = path.with_extension("json.tmp");
    let json = serde_json::to_string_pretty(state).map_err(io::Error::other)?;
    std::fs::write(&temporary, json + "\n")
        .and_then(|()| std::fs::rename(&temporary, &path))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

/// Deletes the state file; a missing file is fine.
///
/// # Errors
///
/// Fails if it exists and cannot be deleted.
pub(crate) fn remove(dir: &Path) -> io::Result<()> {
    let path = path(dir);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("cannot remove {}: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_the_file_and_remove_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("rask-state-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        assert_eq!(read(&dir).expect("read"), None);

        let state = ClusterState {
            dir: dir.clone(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            redis_url: "redis://127.0.0.1:6379/".into(),
            processes: vec![
                ProcessRecord {
                    kind: ProcessKind::RabbitMq,
                    pid: 42,
                    name: "beam.smp".into(),
                    address: Some("amqp://guest:guest@127.0.0.1:5672/%2f".into()),
                    log: dir.join("rabbitmq/log/console.log"),
                    alive: true,
                    supervision: None,
                },
                ProcessRecord {
                    kind: ProcessKind::Worker,
                    pid: 43,
                    name: "rask-worker".into(),
                    address: None,
                    log: dir.join("logs/worker-1.log"),
                    alive: true,
                    supervision: Some(Supervision {
                        number: 1,
                        state: WorkerState::Restarting,
                        restarts: 2,
                        last_exit: Some("killed by signal SIGKILL".into()),
                        last_error: None,
                        pools: vec![rask_common::Pool::new("gpu").unwrap()],
                    }),
                },
            ],
        };
        write(&state).expect("write");
        assert_eq!(read(&dir).expect("read"), Some(state));
        let json = std::fs::read_to_string(path(&dir)).expect("json");
        assert!(json.contains("\"kind\": \"rabbitmq\""), "{json}");
        assert!(json.contains("\"state\": \"restarting\""), "{json}");

        remove(&dir).expect("remove");
        remove(&dir).expect("remove again");
        assert_eq!(read(&dir).expect("read"), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_corrupt_state_file_is_invalid_data() {
        let dir = std::env::temp_dir().join(format!("rask-state-corrupt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(path(&dir), "{ not json").expect("write");
        let error = read(&dir).expect_err("corrupt");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let _ = std::fs::remove_dir_all(dir);
    }
}
