//! `rask local up|down|status`: a private cluster on loopback (see `rask::local`).

use std::process::ExitCode;

use anyhow::Result;
use rask::local::{self, ClusterState, LocalClusterSpec};

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
            };
            let state = local::up(&spec).await?;
            println!("local cluster up in {}", state.dir.display());
            print_state(&state);
            println!(
                "export RASK_AMQP_URL={} RASK_REDIS_URL={}",
                state.amqp_url, state.redis_url
            );
        }
        LocalCommand::Down(args) => {
            let stopped = local::down(&dir(&args)).await?;
            for p in stopped {
                println!("stopped {} pid {}", kind_name(p.kind), p.pid);
            }
        }
        LocalCommand::Status(args) => print_state(&local::status(&dir(&args))?),
    }
    Ok(ExitCode::SUCCESS)
}

fn dir(args: &LocalDirArgs) -> std::path::PathBuf {
    args.dir.clone().unwrap_or_else(local::default_dir)
}

fn print_state(state: &ClusterState) {
    println!("{:<10} {:>8}  {:<7} ADDRESS", "PROCESS", "PID", "STATE");
    for p in &state.processes {
        let kind = kind_name(p.kind);
        let alive = if p.alive { "running" } else { "dead" };
        println!(
            "{kind:<10} {:>8}  {alive:<7} {}",
            p.pid,
            p.address.as_deref().unwrap_or("-")
        );
    }
}

fn kind_name(kind: rask::local::ProcessKind) -> &'static str {
    match kind {
        rask::local::ProcessKind::RabbitMq => "rabbitmq",
        rask::local::ProcessKind::Redis => "redis",
        rask::local::ProcessKind::Worker => "worker",
    }
}
