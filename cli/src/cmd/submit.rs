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
    let futures = client
        .map_encoded_with::<Value>(&args.function, [Ok(encoded)], &args.schedule.options())
        .await?;
    keys_or_results(&client, &futures, args.key_only, args.timeout).await
}
