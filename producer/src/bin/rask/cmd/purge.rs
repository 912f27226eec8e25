//! `rask purge`.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::Global;
use crate::output::connect;

pub(crate) async fn run(global: &Global) -> Result<ExitCode> {
    let client = connect(global).await?;
    let (messages, results) = client.purge().await?;
    println!("purged {messages} queued task(s) and {results} stored result(s)");
    Ok(ExitCode::SUCCESS)
}
