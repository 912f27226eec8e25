//! `rask purge`.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::Global;
use crate::output::connect;

pub(crate) async fn run(global: &Global) -> Result<ExitCode> {
    let client = connect(global).await?;
    let purged = client.purge_report().await?;
    println!(
        "purged {} queued task(s) and {} stored result(s)",
        purged.messages(),
        purged.results
    );
    // Where the tasks were: every shard of the task queue, and the delay queues of tasks
    // waiting for a countdown, an eta or a retry.
    let shards: Vec<String> = purged
        .queues
        .iter()
        .filter(|q| !q.delayed)
        .map(|q| format!("{} {}", q.name, q.messages))
        .collect();
    println!("task queues: {}", shards.join(", "));
    let delayed = purged.queues.iter().filter(|q| q.delayed).count();
    println!(
        "delay queues: {delayed}, holding {} delayed task(s)",
        purged.delayed_messages()
    );
    Ok(ExitCode::SUCCESS)
}
