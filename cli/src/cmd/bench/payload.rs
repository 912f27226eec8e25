//! `payload`: n tasks each echoing a distinct pseudo-random byte payload (1 MiB) back; MiB/s of
//! payload from the first submit to the last result, every byte checked as results arrive (the
//! payloads are made again from their seeds rather than kept, so memory stays small). The floor publishes bodies of the
//! same size, stores values of the same size and checks them the same way.

use anyhow::{bail, Context, Result};
use rask::builtins::echo;
use rask::Client;
use rmpv::Value;
use tokio::time::Instant;

use super::floor::{check_value, Floor, Shape};
use super::report::Figures;
use super::{random_bytes, release, PATIENCE};

/// Seeds of rask's payloads start here (the floor's differ).
const SEED: u64 = 0x5EED_0000;
/// Most payload bytes one gather waits for (see [`rask`]).
const WINDOW_BYTES: usize = 8 << 20;

/// rask: `map(echo, payloads)`, then the results gathered in windows of [`WINDOW_BYTES`], each
/// compared with its payload.
///
/// Why windows: a gather reads every result that is ready in one Redis round trip, and the
/// Redis client gives up on a reply after 500 ms, which hundreds of MiB of ready results exceed
/// on a busy machine (the gather then fails: the read timeout is not retried). A window keeps
/// each read to a few MiB, as the floor's `MGET`s are.
pub(super) async fn rask(client: &Client, n: usize, len: usize) -> Result<Figures> {
    let window = (WINDOW_BYTES / len).max(1);
    let started = Instant::now();
    let futures = client
        .map(
            echo,
            (0..n as u64).map(|i| (Value::Binary(random_bytes(SEED + i, len)),)),
        )
        .await
        .context("submitting")?;
    for (w, chunk) in futures.chunks(window).enumerate() {
        let values = client
            .gather(chunk)
            .timeout(PATIENCE)
            .await
            .context("gathering payloads")?;
        for (j, value) in values.into_iter().enumerate() {
            let i = w * window + j;
            match value {
                Value::Binary(bytes) if bytes == random_bytes(SEED + i as u64, len) => {}
                Value::Binary(bytes) => {
                    bail!("payload {i} came back changed ({} bytes)", bytes.len())
                }
                other => bail!("payload {i} came back as {}", kind(&other)),
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    release(client, &futures).await?;
    Ok(figures(n, len, seconds))
}

/// The floor: `n` bodies as long as rask's echo messages, values as long as its outcomes.
pub(super) async fn floor(floor: &mut Floor, n: usize, len: usize) -> Result<Figures> {
    let sample = Value::Binary(vec![0; len]);
    let shape = Shape::of(echo, (sample.clone(),), sample, 5)?;
    let mut stage = floor.stage().await?;
    let started = Instant::now();
    let keys = stage.publish(&shape, 0..n).await?;
    // Checked as they arrive, inside the clock, as rask's are.
    stage
        .collect(&shape, &keys, |i, value| check_value(&shape, i, &value))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    stage.close().await?;
    Ok(figures(n, len, seconds))
}

fn figures(n: usize, len: usize, seconds: f64) -> Figures {
    let mib = (n * len) as f64 / f64::from(1 << 20);
    Figures::default()
        .with("payloads", n as f64)
        .with("mib", mib)
        .with("seconds", seconds)
        .with("mib_per_s", mib / seconds)
}

/// The name of a value's kind, for errors.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) => "an integer",
        Value::F32(_) | Value::F64(_) => "a float",
        Value::String(_) => "text",
        Value::Binary(_) => "bytes",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an extension",
    }
}
