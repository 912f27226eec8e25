//! `rask local up|down|status`: a private cluster on loopback (see `rask::local`), and the hidden
//! `rask local supervise` that `up` starts to keep its workers running.

use std::process::ExitCode;

use anyhow::Result;
use rask::local::{self, ClusterState, LocalClusterSpec, ProcessKind, SuperviseSpec, WorkerState};

use crate::cli::{LocalCommand, LocalDirArgs};

pub(crate) async fn run(command: LocalCommand) -> Result<ExitCode> {
    match command {
        LocalCommand::Up(args) => {
            let spec = LocalClusterSpec {
                dir: dir(&args.dir),
                amqp_port: args.amqp_port,
                dist_port: args.dist_port,
                redis_port: args.redis_port,
                workers: args.workers,
                worker_env: Vec::new(),
                fsync: args.fsync,
                pools: args.pools,
            };
            let state = local::up(&spec).await?;
            println!("local cluster up in {}", state.dir.display());
            print_state(&state);
            println!(
                "export RASK_AMQP_URL={} RASK_REDIS_URL={}",
                state.amqp_url, state.redis_url
            );
            // The workers inherit this process's environment: clients need the same store.
            if let Some(url) = std::env::var("RASK_BLOB_URL")
                .ok()
                .filter(|url| !url.trim().is_empty())
            {
                println!("export RASK_BLOB_URL={url}");
            }
        }
        LocalCommand::Down(args) => {
            let stopped = local::down(&dir(&args)).await?;
            for p in stopped {
                println!("stopped {} pid {}", kind_name(p.kind), p.pid);
            }
        }
        LocalCommand::Status(args) => print_state(&local::status(&dir(&args))?),
        LocalCommand::Supervise(args) => {
            let spec = SuperviseSpec {
                dir: std::path::absolute(dir(&args.dir))?,
                workers: args.workers,
                program: local::sibling_binary("rask-worker")?,
                // `up` set the workers' environment on this process; they inherit it.
                env: Vec::new(),
                pools: args.pools,
            };
            local::supervise(&spec, shutdown()).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn dir(args: &LocalDirArgs) -> std::path::PathBuf {
    args.dir.clone().unwrap_or_else(local::default_dir)
}

/// Completes on SIGTERM (what `rask local down` sends) or Ctrl-C.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The table of processes; the servers' and workers' lines as they always were, the STATE of a
/// supervised worker as its supervisor recorded it when that says more (`restarting`, `failed`,
/// `stopped`); then a line for the supervisor and one per worker that exited at least once.
fn print_state(state: &ClusterState) {
    println!("{:<10} {:>8}  {:<7} ADDRESS", "PROCESS", "PID", "STATE");
    for p in state
        .processes
        .iter()
        .filter(|p| p.kind != ProcessKind::Supervisor)
    {
        let kind = kind_name(p.kind);
        let supervised = p.supervision.as_ref().map(|s| s.state);
        let alive = match supervised {
            Some(WorkerState::Restarting) if !p.alive => "restarting",
            Some(WorkerState::Failed) if !p.alive => "failed",
            Some(WorkerState::Stopped) if !p.alive => "stopped",
            _ if p.alive => "running",
            _ => "dead",
        };
        let mut line = format!(
            "{kind:<10} {:>8}  {alive:<7} {}",
            p.pid,
            p.address.as_deref().unwrap_or("-")
        );
        // A worker's pools, after its address (`-`): `pools default` for one started without
        // `--pool` (serving its settings' pools, the default one unless RASK_POOLS says so).
        if p.kind == ProcessKind::Worker {
            let pools = p.supervision.as_ref().map(|s| s.pools.as_slice());
            let pools: Vec<&str> = pools
                .unwrap_or_default()
                .iter()
                .map(|p| p.as_str())
                .collect();
            let pools = if pools.is_empty() {
                rask::Pool::DEFAULT.to_owned()
            } else {
                pools.join(",")
            };
            line += &format!("  pools {pools}");
        }
        println!("{line}");
    }
    for p in state
        .processes
        .iter()
        .filter(|p| p.kind == ProcessKind::Supervisor)
    {
        let what = if p.alive {
            "starts workers again when they exit abnormally"
        } else {
            "not alive: workers that exit stay down"
        };
        println!("supervisor pid {}: {what} (log {})", p.pid, p.log.display());
    }
    for p in &state.processes {
        let Some(s) = &p.supervision else { continue };
        let Some(exit) = &s.last_exit else { continue };
        let mut line = format!(
            "worker {}: restarted {} time(s); last exit: {exit}",
            s.number, s.restarts
        );
        if s.state == WorkerState::Failed {
            line += "; failed, not restarted (its configuration cannot work)";
        }
        if let Some(error) = &s.last_error {
            line += &format!("; last log line: {error}");
        }
        println!("{line}");
    }
}

fn kind_name(kind: ProcessKind) -> &'static str {
    match kind {
        ProcessKind::RabbitMq => "rabbitmq",
        ProcessKind::Redis => "redis",
        ProcessKind::Worker => "worker",
        ProcessKind::Supervisor => "supervisor",
    }
}
