//! `rask schedule add|list|remove|pause|resume`: periodic tasks.

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Result};
use rask::{ScheduleInfo, ScheduleSpec, Timing};

use crate::cli::{Global, ScheduleAddArgs, ScheduleCommand};
use crate::json::{encode_args, parse_args, to_json};
use crate::output::connect;

pub(crate) async fn run(global: &Global, command: ScheduleCommand) -> Result<ExitCode> {
    let client = connect(global).await?;
    let code = match command {
        ScheduleCommand::Add(args) => {
            add(&client, args).await?;
            ExitCode::SUCCESS
        }
        ScheduleCommand::List(args) => {
            let schedules = client.schedules().await?;
            if args.json {
                let list: Vec<serde_json::Value> = schedules.iter().map(json).collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                let mut out = std::io::stdout().lock();
                for info in &schedules {
                    writeln!(out, "{}", line(info))?;
                }
            }
            ExitCode::SUCCESS
        }
        ScheduleCommand::Remove(args) => {
            found(&args.name, client.unschedule(&args.name).await?, "removed")
        }
        ScheduleCommand::Pause(args) => found(
            &args.name,
            client.pause_schedule(&args.name).await?,
            "paused",
        ),
        ScheduleCommand::Resume(args) => found(
            &args.name,
            client.resume_schedule(&args.name).await?,
            "resumed",
        ),
    };
    client.close().await?;
    Ok(code)
}

async fn add(client: &rask::Client, args: ScheduleAddArgs) -> Result<()> {
    let spec = match (&args.cron, args.every) {
        (Some(pattern), None) => match &args.tz {
            Some(tz) => ScheduleSpec::cron_in(pattern, tz)?,
            None => ScheduleSpec::cron(pattern)?,
        },
        (None, Some(every)) => ScheduleSpec::every(every),
        _ => bail!("give one of --cron and --every"),
    }
    .missed(args.missed);
    let encoded = encode_args(&parse_args(&args.args)?)?;
    client
        .schedule_encoded(
            &args.name,
            spec,
            &args.function,
            encoded,
            &args.schedule.options(),
        )
        .await?;
    println!("scheduled {}", args.name);
    Ok(())
}

/// Says what was done, or that there is no such schedule (exit code 1).
fn found(name: &str, exists: bool, done: &str) -> ExitCode {
    if exists {
        println!("{done} {name}");
        ExitCode::SUCCESS
    } else {
        eprintln!("rask: no schedule named {name:?}");
        ExitCode::FAILURE
    }
}

fn time(at: Option<SystemTime>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |t| humantime::format_rfc3339_millis(t).to_string(),
    )
}

fn line(info: &ScheduleInfo) -> String {
    let s = &info.schedule;
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        s.name,
        s.timing.describe(),
        s.template.function,
        time(info.next_tick),
        time(info.last_tick),
        if s.paused { "paused" } else { "active" }
    )
}

fn json(info: &ScheduleInfo) -> serde_json::Value {
    let s = &info.schedule;
    let args = rmpv::decode::read_value(&mut s.template.args.as_slice())
        .map(to_json)
        .unwrap_or(serde_json::Value::Null);
    let mut value = serde_json::json!({
        "name": s.name,
        "missed": s.missed.to_string(),
        "paused": s.paused,
        "function": s.template.function,
        "args": args,
        "next_tick": info.next_tick.map(|t| humantime::format_rfc3339_millis(t).to_string()),
        "last_tick": info.last_tick.map(|t| humantime::format_rfc3339_millis(t).to_string()),
    });
    match &s.timing {
        Timing::Cron { pattern, tz } => {
            value["cron"] = pattern.clone().into();
            value["tz"] = tz.clone().into();
        }
        Timing::Every { every_ms, .. } => value["every_ms"] = (*every_ms).into(),
    }
    value
}
