//! `rask release KEY ...`.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Global, ReleaseArgs};
use crate::output::{connect, parse_keys};

pub(crate) async fn run(global: &Global, args: ReleaseArgs) -> Result<ExitCode> {
    let keys = parse_keys(args.keys)?;
    let client = connect(global).await?;
    let deleted = client.release(&keys).await?;
    println!("{deleted}");
    Ok(ExitCode::SUCCESS)
}
