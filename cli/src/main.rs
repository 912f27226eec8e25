//! `rask`: the command-line client. Parses the command once, then runs it; every subcommand
//! lives in its own file under `cmd/`.

mod cli;
mod cmd;
mod json;
mod output;

use std::process::ExitCode;

use clap::Parser;
use rask_common::otlp;

use crate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let exporter = init_tracing(&cli);
    // On a runtime thread rather than the main one: the client's own tasks then wake the
    // command's future without a hand-off between threads.
    let result = match tokio::spawn(dispatch(cli)).await {
        Ok(result) => result,
        Err(panicked) => std::panic::resume_unwind(panicked.into_panic()),
    };
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(output::EXIT_ERROR)
        }
    }
}

/// Installs the log subscriber (`RUST_LOG`, default `warn`), exporting the command's spans (a
/// submit's, map's or graph's `rask.publish`) to `otlp_endpoint` when the settings set one.
/// Settings that do not load leave it to the command to report them; an endpoint the exporter
/// refuses is a warning (the command still runs, without spans).
fn init_tracing(cli: &Cli) -> Option<otlp::Otlp> {
    let settings = match &cli.global.config {
        Some(file) => rask::Settings::load_from(file, true),
        None => rask::Settings::load(),
    }
    .unwrap_or_default();
    match otlp::init_tracing(&settings, "warn", "rask") {
        Ok(exporter) => exporter,
        Err(error) => {
            let unexported = rask::Settings {
                otlp_endpoint: String::new(),
                ..settings
            };
            let _ = otlp::init_tracing(&unexported, "warn", "rask");
            tracing::warn!(%error, "no spans are exported");
            None
        }
    }
}

/// Runs the command `cli` names.
async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Submit(args) => cmd::submit::run(&cli.global, args).await,
        Command::Map(args) => cmd::map::run(&cli.global, args).await,
        Command::Gather(args) => cmd::gather::run(&cli.global, args).await,
        Command::Release(args) => cmd::release::run(&cli.global, args).await,
        Command::Cancel(args) => cmd::cancel::run(&cli.global, args).await,
        Command::Purge => cmd::purge::run(&cli.global).await,
        Command::Run(args) => cmd::run::run(&cli.global, args).await,
        Command::Status(args) => cmd::status::run(&cli.global, args).await,
        Command::Inspect(args) => cmd::inspect::run(&cli.global, args).await,
        Command::Events(args) => cmd::events::run(&cli.global, args).await,
        Command::Report(args) => cmd::report::run(&cli.global, args).await,
        Command::Dashboard(args) => cmd::dashboard::run(&cli.global, args).await,
        Command::Dead(command) => cmd::dead::run(&cli.global, command).await,
        Command::Schedule(command) => cmd::schedule::run(&cli.global, command).await,
        Command::Limit(command) => cmd::limit::run(&cli.global, command).await,
        Command::Local(command) => cmd::local::run(command).await,
        Command::Demo(args) => cmd::demo::run(&cli.global, args).await,
        Command::Bench(args) => cmd::bench::run(&cli.global, args).await,
    }
}
