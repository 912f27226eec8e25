//! `rask events [--follow] [--json] [--function F] [--since DURATION]`: the deployment's task
//! events, oldest first, from its bounded Redis Stream.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use rask::Event;

use crate::cli::{EventsArgs, Global};
use crate::cmd::inspect::time;
use crate::output::monitor;

/// Stream entries read per request.
const PAGE: usize = 1000;
/// How often `--follow` looks for new events.
const POLL: Duration = Duration::from_millis(250);

pub(crate) async fn run(global: &Global, args: EventsArgs) -> Result<ExitCode> {
    let client = monitor(global).await?;
    let mut last: Option<String> = None;
    loop {
        let events = client.events(last.as_deref(), args.since, PAGE).await?;
        // `PAGE` counts stream entries, each of many events: read on until nothing is left.
        let full = !events.is_empty();
        for event in &events {
            if args.function.as_ref().is_none_or(|f| *f == event.function) {
                if args.json {
                    println!("{}", serde_json::to_string(event)?);
                } else {
                    println!("{}", line(event));
                }
            }
        }
        if let Some(event) = events.last() {
            last = Some(event.id.clone());
        }
        if full {
            continue;
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// `TIME KIND KEY FUNCTION` then what the event carries.
fn line(event: &Event) -> String {
    let mut out = format!(
        "{}  {:<13} {}  {}",
        time(event.at),
        event.kind.as_str(),
        event.key,
        event.function
    );
    if let Some(by) = &event.by {
        out.push_str(&format!("  by {by}"));
    }
    if let Some(worker) = &event.worker {
        out.push_str(&format!("  on {worker}"));
    }
    if let Some(slot) = event.slot {
        out.push_str(&format!(" slot {slot}"));
    }
    if let Some(d) = event.duration_ms {
        out.push_str(&format!("  {d} ms"));
    }
    if let Some(error) = &event.error {
        out.push_str(&format!("  {error}"));
    }
    out
}
