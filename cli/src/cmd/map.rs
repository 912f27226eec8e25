//! `rask map FUNC`: one task per input line, each line a JSON array of arguments.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use rmpv::Value;

use crate::cli::{Global, MapArgs};
use crate::json::encode_args;
use crate::output::{connect, keys_or_results};

pub(crate) async fn run(global: &Global, args: MapArgs) -> Result<ExitCode> {
    let lines: Vec<String> = match &args.input {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .context("reading stdin")?,
    };
    let mut encoded = Vec::with_capacity(lines.len());
    for (n, line) in lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let parsed: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("line {}: not JSON: {line:?}", n + 1))?;
        let serde_json::Value::Array(items) = parsed else {
            bail!(
                "line {}: expected a JSON array of arguments, e.g. [41], got {line:?}",
                n + 1
            );
        };
        encoded.push(encode_args(&items)?);
    }
    let client = connect(global).await?;
    let mut options = args.schedule.options();
    if let Some(calls) = args.batch {
        options = options.batch(calls as usize);
    }
    let futures = client
        .map_encoded_with::<Value>(&args.function, encoded.into_iter().map(Ok), &options)
        .await?;
    let code = keys_or_results(&client, &futures, args.keys_only, args.timeout).await;
    if options.hedge_policy().is_some() {
        // Revokes the other copies of hedged tasks before the process exits.
        client.close().await?;
    }
    code
}
