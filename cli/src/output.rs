//! How commands print results: values as JSON lines on stdout, failures on stderr, and the
//! exit code that tells scripts whether everything succeeded.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use rask::{Client, Settings};
use rmpv::Value;

use crate::cli::Global;
use crate::json::to_json;

/// Some task failed or was not done within `--timeout` (its error is on stderr).
pub(crate) const EXIT_TASK_FAILED: u8 = 1;
/// rask itself failed: bad usage, bad input, settings, connection.
pub(crate) const EXIT_ERROR: u8 = 2;

/// Loads settings (file from `--config`, else `rask.toml` if present, then `RASK_*`).
pub(crate) fn settings(global: &Global) -> Result<Settings> {
    for name in Settings::unknown_variables(std::env::vars().map(|(k, _)| k)) {
        eprintln!("warning: ignoring {name}: it names no rask setting");
    }
    match &global.config {
        Some(file) => Settings::load_from(file, true),
        None => Settings::load(),
    }
    .context("loading settings")
}

/// Connects a client with the command's settings.
pub(crate) async fn connect(global: &Global) -> Result<Client> {
    connect_to(global, None).await
}

/// Connects a client with the command's settings, or with those of `pool`'s queues (whose
/// task and dead-letter queues it then works on as a client of the default pool would).
pub(crate) async fn connect_to(global: &Global, pool: Option<&rask::Pool>) -> Result<Client> {
    let mut settings = settings(global)?;
    if let Some(pool) = pool {
        settings = settings.for_pool(pool);
    }
    Client::connect(settings.clone()).await.with_context(|| {
        format!(
            "connecting to {} and {} (is a cluster running? try `rask local up`)",
            masked(settings.amqp_nodes()),
            masked(settings.redis_nodes())
        )
    })
}

/// Connects a monitor (Redis only) with the command's settings.
pub(crate) async fn monitor(global: &Global) -> Result<rask::Monitor> {
    let settings = settings(global)?;
    rask::Monitor::connect(settings.clone())
        .await
        .with_context(|| format!("connecting to {}", masked(settings.redis_nodes())))
}

/// The URLs with their passwords masked, comma-separated.
fn masked(urls: Vec<&str>) -> String {
    urls.into_iter()
        .map(rask_common::settings::mask_url)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints results in order: a JSON line per value; for a failure, `null` on stdout (so lines
/// stay aligned with inputs) and the error on stderr. Returns the exit code.
pub(crate) fn print_results(results: Vec<rask::Result<Value>>) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    for (line, result) in results.into_iter().enumerate() {
        match result {
            Ok(value) => writeln!(out, "{}", to_json(value))?,
            Err(error) => {
                failed += 1;
                writeln!(out, "null")?;
                eprintln!("error: result {}: {error}", line + 1);
            }
        }
    }
    out.flush()?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_TASK_FAILED)
    })
}

/// Prints the keys of `futures` (`keys_only`), or waits for them (up to `timeout`) and prints
/// their results; returns the exit code.
pub(crate) async fn keys_or_results(
    client: &Client,
    futures: &[rask::Future<Value>],
    keys_only: bool,
    timeout: Option<std::time::Duration>,
) -> Result<ExitCode> {
    if keys_only {
        print_keys(futures.iter().map(|f| f.key()))?;
        return Ok(ExitCode::SUCCESS);
    }
    if futures.len() > 1 && std::io::stderr().is_terminal() {
        return print_results(gather_with_bar(client, futures, timeout).await?);
    }
    let gather = client.gather(futures);
    let results = match timeout {
        Some(t) => gather.timeout(t).each().await?,
        None => gather.each().await?,
    };
    print_results(results)
}

/// Waits like `gather(..).each()`, drawing a progress bar on the terminal (stderr) as results
/// come in; the bar is cleared when done, so that only the results stay.
async fn gather_with_bar(
    client: &Client,
    futures: &[rask::Future<Value>],
    timeout: Option<std::time::Duration>,
) -> Result<Vec<rask::Result<Value>>> {
    let bar = indicatif::ProgressBar::new(futures.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40.cyan/blue} {pos}/{len} tasks  {msg}  {elapsed_precise} (eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let results = client
        .gather_with_progress(futures, timeout, |progress| {
            bar.set_position(progress.done as u64);
            if progress.failed > 0 {
                bar.set_message(format!("{} failed", progress.failed));
            }
        })
        .await?;
    bar.finish_and_clear();
    Ok(results)
}

/// Parses task keys given on the command line.
pub(crate) fn parse_keys(keys: Vec<String>) -> Result<Vec<rask::TaskKey>> {
    Ok(keys
        .into_iter()
        .map(rask::TaskKey::new)
        .collect::<Result<Vec<_>, _>>()?)
}

/// Prints one line per key.
pub(crate) fn print_keys<'a>(keys: impl IntoIterator<Item = &'a rask::TaskKey>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for key in keys {
        writeln!(out, "{key}")?;
    }
    out.flush()?;
    Ok(())
}
