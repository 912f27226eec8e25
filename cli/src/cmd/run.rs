//! `rask run FUNC [ARG_JSON ...]`: one function on every live worker, answers by worker id.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use rmpv::Value;

use crate::cli::{Global, RunArgs};
use crate::json::{encode_args, parse_args, to_json};
use crate::output::{settings, EXIT_TASK_FAILED};

pub(crate) async fn run(global: &Global, args: RunArgs) -> Result<ExitCode> {
    let encoded = encode_args(&parse_args(&args.args)?)?;
    let monitor = rask::Monitor::connect(settings(global)?)
        .await
        .context("connecting to Redis")?;
    let report = monitor
        .run::<Value>(&args.function, encoded, args.timeout)
        .await
        .context("broadcasting")?;
    let complete = report.is_complete();
    let answers: serde_json::Map<String, serde_json::Value> = report
        .answers
        .into_iter()
        .map(|(worker, value)| (worker, to_json(value)))
        .collect();
    let out = serde_json::json!({
        "answers": answers,
        "failed": report.failed,
        "missing": report.missing,
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{out}")?;
    stdout.flush()?;
    for id in &report.missing {
        eprintln!(
            "missing: worker {id} did not answer within {:?}",
            args.timeout
        );
    }
    for (id, failure) in &report.failed {
        eprintln!(
            "error: worker {id}: {:?}: {}",
            failure.kind, failure.message
        );
    }
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_TASK_FAILED)
    })
}
