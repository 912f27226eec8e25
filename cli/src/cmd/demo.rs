//! `rask demo`: the main job, after the classic Dask workshop. Image batches are generated
//! here (deterministically, no downloads) into a [`Bag`] of one batch per partition, analysed on
//! the workers by the bag's `map` (grayscale, blur, Sobel edges, histogram), and the per-batch
//! statistics reduced on the cluster to one summary: the bag regrouped into partitions of
//! [`GROUP`] batches, `image_summary` per group, then `merge_image_summaries` over the groups
//! (the bag's `reduction`). The first group's summary is persisted on its own first, to show that
//! the final graph reuses it (same content key) instead of computing it again: the demo counts
//! the `image_summary` tasks the workers start during the final compute (their `/metrics`) and
//! says it was reused only when there was one fewer than there are groups. At the end the images
//! and their statistics are released, so that the next demo analyses them again.
//!
//! The cluster is heterogeneous: the analysis runs on pool `--pool` (default `gpu`), each task
//! needing one `gpu` slot there, while the reduction runs on the default pool. Without a live
//! worker of that pool the demo stops and says how to start one; `--pool default` runs the
//! analysis on the default pool, needing nothing. `image_stats` takes its worker's state, the
//! [`LumaTable`] built once per worker process; the demo reports how many times the live
//! workers built it (their `/metrics`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rask::builtins::{image_stats, image_stats_from, image_summary, merge_image_summaries};
use rask::{Bag, BlobStores, Client, Monitor, Pool, Task, TaskOptions};
use rask_common::bag_ops;
use rask_demo::image::{batch_len, generate_batch, LumaTable};

use crate::cli::{DemoArgs, Global};
use crate::cmd::executions;
use crate::output::{connect, settings};

/// Batches per `image_summary` task of the reduction tree.
const GROUP: usize = 8;

/// What each analysis task needs on a pool other than the default one: one GPU slot.
const NEED: (&str, u64) = ("gpu", 1);

/// How long the demo waits for a live worker of the analysis pool before it gives up.
const WORKER_WAIT: Duration = Duration::from_secs(5);

pub(crate) async fn run(global: &Global, args: DemoArgs) -> Result<ExitCode> {
    let Some(bytes) = batch_len(args.images, args.size, args.size) else {
        bail!(
            "--images {} --size {} makes batches too large",
            args.images,
            args.size
        );
    };
    let client = connect(global).await?;
    let options = analysis_options(&client, &args.pool).await?;
    println!(
        "rask demo: {} batches of {} images of {}x{} ({:.1} MiB in all)",
        args.batches,
        args.images,
        args.size,
        args.size,
        (bytes as f64 * f64::from(args.batches)) / (1024.0 * 1024.0)
    );
    if args.pool.is_default() {
        println!(
            "image analysis on the default pool (no resources); reduction on the default pool"
        );
    } else {
        println!(
            "image analysis on pool {} with {}={} per task; reduction on the default pool",
            args.pool, NEED.0, NEED.1
        );
    }
    let monitor = Monitor::connect(settings(global)?).await?;
    let maps_before = executions::started(&monitor, bag_ops::MAP).await;
    let started = Instant::now();
    let partitions = args.batches as usize;
    let (image_keys, stats) = match &args.from {
        // The batches stay in the blob store; the tasks carry their URLs.
        Some(from) => {
            let urls = store_batches(&client, from, &args).await?;
            let images = Bag::from_iter(urls, partitions);
            let stats = images
                .map(image_stats_from)
                .with_options(options)
                .persist(&client)
                .await
                .context("submitting batches")?;
            (images.keys(), stats)
        }
        None => {
            let batches =
                (0..args.batches).map(|id| generate_batch(id, args.images, args.size, args.size));
            let images = Bag::from_iter(batches, partitions);
            let stats = images
                .map(image_stats)
                .with_options(options)
                .persist(&client)
                .await
                .context("submitting batches")?;
            (images.keys(), stats)
        }
    };
    let futures = stats.futures(&client);

    let bar =
        ProgressBar::with_draw_target(Some(futures.len() as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} analysing [{bar:30}] {pos}/{len} batches ({elapsed})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut completed = client.as_completed(&futures);
    let deadline = tokio::time::Instant::now() + args.timeout;
    while let Some((index, result)) = tokio::time::timeout_at(deadline, completed.next())
        .await
        .context("timed out waiting for batches (are workers running?)")?
    {
        result.with_context(|| format!("batch {index}"))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let analysed = started.elapsed();
    let maps_after = executions::started(&monitor, bag_ops::MAP).await;
    let ran_on = match (&maps_before, &maps_after) {
        (Some(before), Some(after)) => executions::by_pools(&monitor, before, after).await,
        _ => None,
    };

    // The reduction tree over the stored per-batch statistics (nothing is shipped back here).
    let groups = stats.repartition(partitions.div_ceil(GROUP));
    let reused = match groups.partitions().into_iter().next() {
        Some(first) => {
            let first = client.persist(&image_summary.delayed(first)).await?;
            client
                .wait(std::slice::from_ref(&first))
                .timeout(args.timeout)
                .await
                .context("summarising the first group")?;
            first.done().await?.then(|| first.key().clone())
        }
        None => None,
    };
    let root = groups.reduction(image_summary, merge_image_summaries);
    let before = executions::started(&monitor, image_summary::NAME).await;
    let summary = tokio::time::timeout(args.timeout, client.compute(&root))
        .await
        .context("timed out reducing the batch statistics")?
        .context("reducing the batch statistics")?;
    println!("{}", summary.render());
    println!(
        "analysed {} images on the cluster in {:.2} s ({:.0} images/s), summary reduced in {:.0} ms",
        summary.images,
        analysed.as_secs_f64(),
        summary.images as f64 / analysed.as_secs_f64(),
        (started.elapsed() - analysed).as_secs_f64() * 1000.0
    );
    match ran_on {
        Some(ran_on) => {
            let ran_on: Vec<String> = ran_on
                .iter()
                .filter(|(_, ran)| **ran > 0)
                .map(|(pools, ran)| format!("{ran} on workers of pool {pools}"))
                .collect();
            println!(
                "analysis tasks ({} of image_stats over {partitions} batches) ran: {}",
                bag_ops::MAP,
                ran_on.join(", ")
            );
        }
        None => println!(
            "where the analysis tasks ran cannot be told (a worker's /metrics could not be read)"
        ),
    }
    if let Some(key) = reused {
        let after = executions::started(&monitor, image_summary::NAME).await;
        let ran = before
            .zip(after)
            .and_then(|(b, a)| executions::between(&b, &a));
        let groups = groups.partitions().len() as u64;
        match ran {
            // The final graph has one image_summary per group; the first one was stored.
            Some(ran) if ran + 1 == groups => println!(
                "first group's summary {key} was persisted before the final compute and reused by it: the workers ran image_summary {ran} time(s) for {groups} group(s)"
            ),
            // Content keys: a cluster that keeps an earlier run's results reuses them all.
            Some(0) => println!(
                "first group's summary {key} was persisted before the final compute; every group's summary was stored already (an earlier run's, reused by its content key): the workers ran image_summary 0 time(s) for {groups} group(s)"
            ),
            Some(ran) => println!(
                "first group's summary {key} was persisted before the final compute; the workers ran image_summary {ran} time(s) for {groups} group(s) meanwhile"
            ),
            None => println!(
                "first group's summary {key} was persisted before the final compute (whether it was reused cannot be told: a worker's /metrics could not be read)"
            ),
        }
    }
    let state = std::any::type_name::<LumaTable>();
    match executions::states_built(&monitor, state).await {
        // A worker of a registry without the stock functions builds none.
        Some(builds) => println!(
            "worker state {state} (image_stats's luma table) built {} time(s) by {} of {} live worker(s), once per worker process and shared by its tasks",
            builds.values().sum::<u64>(),
            builds.values().filter(|n| **n > 0).count(),
            builds.len()
        ),
        None => println!(
            "worker state {state} (image_stats's luma table): how many times it was built cannot be told (a worker's /metrics could not be read)"
        ),
    }
    // The images and their statistics are content-keyed: left stored, a second demo on this
    // cluster would find them and measure nothing. The summaries stay, as persisted results do.
    let stored: Vec<_> = image_keys.into_iter().chain(stats.keys()).collect();
    client.release(&stored).await?;
    client.close().await?;
    Ok(ExitCode::SUCCESS)
}

/// The options of the analysis tasks on `pool`: the pool, and one GPU slot each unless it is
/// the default pool.
///
/// # Errors
/// When no live worker serves `pool` within [`WORKER_WAIT`]: the error says how to start one.
async fn analysis_options(client: &Client, pool: &Pool) -> Result<TaskOptions> {
    let options = TaskOptions::new().pool(pool);
    if pool.is_default() {
        return Ok(options);
    }
    match client
        .wait_for_workers(1)
        .pool(pool)
        .timeout(WORKER_WAIT)
        .await
    {
        // Tasks needing more than any worker of the pool has would fail, each naming the
        // resource: say it once, before anything is submitted.
        Ok(workers) if workers.iter().all(|w| w.resources.get(NEED.0) < NEED.1) => bail!(
            "the live workers of pool {pool} declare no {} (the demo's analysis tasks need {}={} each): start them with it, e.g. `rask local up --pool {pool}:1:{}=2` (or `rask-worker --pools {pool} --resources {}=2`), or run the analysis on the default pool with `rask demo --pool default`",
            NEED.0, NEED.0, NEED.1, NEED.0, NEED.0
        ),
        Ok(_) => Ok(options.resources([NEED])),
        Err(rask::Error::WorkersTimeout { waited, .. }) => bail!(
            "no live worker serves pool {pool} (waited {waited:.0?}): the demo analyses images there, each task needing {}={}. Start one, e.g. `rask local up --pool {pool}:1:{}=2` (or `rask-worker --pools {pool} --resources {}=2`), or run the analysis on the default pool with `rask demo --pool default`",
            NEED.0, NEED.1, NEED.0, NEED.0
        ),
        Err(e) => Err(e).context("waiting for a worker of the analysis pool"),
    }
}

/// Writes the demo's batches to the blob store under `from` (MessagePack, as a task message
/// would carry them), skipping those already there, and returns their URLs.
///
/// # Errors
/// A bad URL, or a store that refuses or cannot be reached.
async fn store_batches(client: &Client, from: &str, args: &DemoArgs) -> Result<Vec<String>> {
    let from = from.trim_end_matches('/');
    let mut urls = Vec::with_capacity(args.batches as usize);
    let mut written = 0;
    let stores = BlobStores::new(client.settings());
    for id in 0..args.batches {
        let url = format!(
            "{from}/batch-{id}-{}x{}x{}.msgpack",
            args.images, args.size, args.size
        );
        let blob = stores
            .blob(&url)
            .with_context(|| format!("--from {from}"))?;
        if blob.size().await?.is_none() {
            let batch = generate_batch(id, args.images, args.size, args.size);
            blob.put(rmp_serde::to_vec(&batch)?).await?;
            written += 1;
        }
        urls.push(url);
    }
    println!(
        "batches kept under {from}: {written} written, {} already there",
        urls.len() - written
    );
    Ok(urls)
}
