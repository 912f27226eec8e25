//! `rask limit set|list|remove`: global rate and concurrency limits per function or pool.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use rask::{Limit, LimitInfo};

use crate::cli::{limit_subject, Global, LimitCommand};
use crate::output::connect;

pub(crate) async fn run(global: &Global, command: LimitCommand) -> Result<ExitCode> {
    let client = connect(global).await?;
    let code = match command {
        LimitCommand::Set(args) => {
            let limit = Limit {
                rate: args.rate,
                burst: args.burst,
                concurrency: args.concurrency,
            };
            let subject = limit_subject(args.function, args.pool.as_ref());
            client.set_limit(&subject, limit).await?;
            println!("limited {subject}: {limit}");
            ExitCode::SUCCESS
        }
        LimitCommand::List(args) => {
            let limits = client.limits().await?;
            if args.json {
                let list: Vec<serde_json::Value> = limits.iter().map(json).collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                let mut out = std::io::stdout().lock();
                for info in &limits {
                    writeln!(out, "{}", line(info))?;
                }
            }
            ExitCode::SUCCESS
        }
        LimitCommand::Remove(args) => {
            let subject = limit_subject(args.function, args.pool.as_ref());
            if client.remove_limit(&subject).await? {
                println!("removed the limit of {subject}");
                ExitCode::SUCCESS
            } else {
                eprintln!("rask: no limit set for {subject:?}");
                ExitCode::FAILURE
            }
        }
    };
    client.close().await?;
    Ok(code)
}

fn line(info: &LimitInfo) -> String {
    let l = &info.limit;
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    format!(
        "{}\t{}\t{}\t{}\t{}",
        info.function,
        or_dash(l.rate.map(|r| r.to_string())),
        or_dash(l.rate.map(|_| l.effective_burst().to_string())),
        or_dash(l.concurrency.map(|n| n.to_string())),
        info.source.as_str(),
    )
}

fn json(info: &LimitInfo) -> serde_json::Value {
    let l = &info.limit;
    serde_json::json!({
        "function": info.function,
        "rate": l.rate.map(|r| r.to_string()),
        "burst": l.rate.map(|_| l.effective_burst()),
        "concurrency": l.concurrency,
        "source": info.source.as_str(),
    })
}
