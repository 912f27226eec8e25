//! `rask submit FUNC [ARG_JSON ...]`.

use std::process::ExitCode;

use anyhow::Result;
use rmpv::Value;

use crate::cli::{Global, SubmitArgs};
use crate::json::{encode_args, parse_args};
use crate::output::{connect, print_keys, print_results};

pub(crate) async fn run(global: &Global, args: SubmitArgs) -> Result<ExitCode> {
    let encoded = encode_args(&parse_args(&args.args)?)?;
    let client = connect(global).await?;
    let futures = client
        .map_encoded::<Value>(&args.function, [Ok(encoded)])
        .await?;
    if args.key_only {
        print_keys(futures.iter().map(|f| f.key()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let gather = client.gather(&futures);
    let results = match args.timeout {
        Some(t) => gather.timeout(t).each().await?,
        None => gather.each().await?,
    };
    print_results(results)
}
