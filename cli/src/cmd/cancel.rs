//! `rask cancel KEY ... [--force]`.

use std::process::ExitCode;

use anyhow::Result;
use rmpv::Value;

use crate::cli::{CancelArgs, Global};
use crate::output::{connect, parse_keys};

pub(crate) async fn run(global: &Global, args: CancelArgs) -> Result<ExitCode> {
    let keys = parse_keys(args.keys)?;
    let client = connect(global).await?;
    let futures: Vec<rask::Future<Value>> = keys.into_iter().map(|k| client.future(k)).collect();
    let cancel = client.cancel(&futures);
    let cancelled = if args.force {
        cancel.force().await?
    } else {
        cancel.await?
    };
    println!("{cancelled}");
    Ok(ExitCode::SUCCESS)
}
