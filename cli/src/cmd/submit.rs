//! `rask submit FUNC [ARG_JSON ...]`.

use std::process::ExitCode;

use anyhow::Result;
use rmpv::Value;

use crate::cli::{Global, SubmitArgs};
use crate::json::{encode_args, parse_args};
use crate::output::{connect, keys_or_results};

pub(crate) async fn run(global: &Global, args: SubmitArgs) -> Result<ExitCode> {
    let encoded = encode_args(&parse_args(&args.args)?)?;
    let client = connect(global).await?;
    let options = args.schedule.options();
    let futures = client
        .map_encoded_with::<Value>(&args.function, [Ok(encoded)], &options)
        .await?;
    let code = keys_or_results(&client, &futures, args.key_only, args.timeout).await;
    if options.hedge_policy().is_some() {
        // Revokes the other copies of hedged tasks before the process exits.
        client.close().await?;
    }
    code
}
