//! `rask gather KEY ...`.

use std::process::ExitCode;

use anyhow::Result;
use rmpv::Value;

use crate::cli::{GatherArgs, Global};
use crate::output::{connect, keys_or_results, parse_keys};

pub(crate) async fn run(global: &Global, args: GatherArgs) -> Result<ExitCode> {
    let keys = parse_keys(args.keys)?;
    let client = connect(global).await?;
    let futures: Vec<rask::Future<Value>> = keys.into_iter().map(|k| client.future(k)).collect();
    keys_or_results(&client, &futures, false, args.timeout).await
}
