//! `rask gather KEY ...`.

use std::process::ExitCode;

use anyhow::Result;
use rask::TaskKey;
use rmpv::Value;

use crate::cli::{GatherArgs, Global};
use crate::output::{connect, print_results};

pub(crate) async fn run(global: &Global, args: GatherArgs) -> Result<ExitCode> {
    let keys = args
        .keys
        .into_iter()
        .map(TaskKey::new)
        .collect::<Result<Vec<_>, _>>()?;
    let client = connect(global).await?;
    let futures: Vec<rask::Future<Value>> = keys.into_iter().map(|k| client.future(k)).collect();
    let gather = client.gather(&futures);
    let results = match args.timeout {
        Some(t) => gather.timeout(t).each().await?,
        None => gather.each().await?,
    };
    print_results(results)
}
