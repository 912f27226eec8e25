//! `rask release KEY ...`.

use std::process::ExitCode;

use anyhow::Result;
use rask::TaskKey;

use crate::cli::{Global, ReleaseArgs};
use crate::output::connect;

pub(crate) async fn run(global: &Global, args: ReleaseArgs) -> Result<ExitCode> {
    let keys = args
        .keys
        .into_iter()
        .map(TaskKey::new)
        .collect::<Result<Vec<_>, _>>()?;
    let client = connect(global).await?;
    let deleted = client.release(&keys).await?;
    println!("{deleted}");
    Ok(ExitCode::SUCCESS)
}
