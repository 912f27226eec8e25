//! `rask dead list` and `rask dead requeue`: the dead-letter queue for operators.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use rask::TaskKey;

use crate::cli::{DeadCommand, Global};
use crate::output::connect_to;

pub(crate) async fn run(global: &Global, command: DeadCommand) -> Result<ExitCode> {
    let pool = match &command {
        DeadCommand::List(args) => args.pool.as_ref(),
        DeadCommand::Requeue(args) => args.pool.as_ref(),
    };
    let client = connect_to(global, pool).await?;
    match command {
        DeadCommand::List(args) => {
            let letters = client.dead_letters(args.limit).await?;
            let mut out = std::io::stdout().lock();
            for letter in letters {
                let key = letter.key.as_ref().map(TaskKey::as_str);
                if args.json {
                    let line = serde_json::json!({
                        "key": key,
                        "function": letter.function,
                        "reason": letter.reason,
                        "worker": letter.worker,
                        "bytes": letter.body.len(),
                    });
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}",
                        key.unwrap_or("-"),
                        letter.function.as_deref().unwrap_or("-"),
                        letter.body.len(),
                        letter.reason.replace(['\t', '\n'], " ")
                    )?;
                }
            }
        }
        DeadCommand::Requeue(args) => {
            let only = args.key.map(TaskKey::new).transpose()?;
            let done = client
                .requeue_dead_letters(args.limit, only.as_ref())
                .await?;
            println!("requeued {} dead-lettered message(s)", done.requeued);
        }
    }
    client.close().await?;
    Ok(ExitCode::SUCCESS)
}
