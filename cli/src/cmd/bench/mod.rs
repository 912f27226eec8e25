//! `rask bench`: the canonical workloads (docs/benchmarks.md) on a cluster with N worker
//! processes, each measured beside the floor (the same message sizes straight through lapin and
//! Redis) in the same run, so that ratios stay meaningful on a noisy shared machine.
//!
//! Output: a `RESULT system=rask|floor workload=NAME k=v ...` line per system as each workload
//! finishes, then a table (or, with `--json`, one JSON document as the last line). Progress goes
//! to stderr. Every result is checked; a wrong one fails the command.
//!
//! # Layout
//! - `mod.rs`: flags, sizes, the order of runs, memory and CPU around each run.
//! - `cluster.rs`: the private RabbitMQ, Redis and workers (or the running deployment).
//! - `throughput.rs`, `latency.rs`, `dag.rs`, `payload.rs`, `scale.rs`, `cpu.rs`, `fine.rs`,
//!   `million.rs`: one workload each, rask's run and the floor's side by side.
//! - `stragglers.rs`: hedged execution, a map with 1 % slow runs with and without hedging.
//! - `floor.rs`: publisher, consumers and polling client of the floor.
//! - `report.rs`: figures, `RESULT` lines, the table and the JSON document.
//! - `rss.rs`: memory and CPU of processes from `/proc`.

mod cluster;
mod cpu;
mod dag;
mod fine;
mod floor;
mod latency;
mod million;
mod payload;
mod report;
mod rss;
mod scale;
mod stragglers;
mod throughput;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use rask::Client;
use tokio::time::Instant;

use self::cluster::Cluster;
use self::floor::Floor;
use self::report::{thousands, Context, Figures, Idle, IdleWorker, Metric, Row};
use self::rss::Pid;
use crate::cli::{BenchArgs, Global};
use crate::output;

/// How long any one wait (a gather, a floor poll) may take before the bench fails.
const PATIENCE: Duration = Duration::from_secs(600);
/// Pause after the workers start consuming, before the idle window.
const SETTLE: Duration = Duration::from_millis(500);
/// Results released per `release` call.
const RELEASE_KEYS: usize = 10_000;

/// A canonical workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Workload {
    /// 20,000 `inc` tasks with `map`, then gathered: tasks/s.
    Throughput,
    /// 2,000 sequential submit → result round trips: p50/p90/p99 µs.
    Latency,
    /// A binary reduction tree of 2,047 `leaf`/`add` tasks, level by level: seconds.
    Dag,
    /// 1,000 tasks echoing a distinct 1 MiB payload: MiB/s.
    Payload,
    /// Throughput at 200,000 tasks: tasks/s and peak RSS.
    Scale,
    /// 2,000 CPU-bound `spin_hash` tasks (about 8 ms each here): tasks/s, against the same hashing on
    /// one thread per worker. Only when asked for (not part of the default run).
    Cpu,
    /// 200,000 `inc` through one batched `map` (100 calls per message), against a floor that
    /// batches the same way: tasks/s.
    Fine,
    /// A `map` of 1,000,000 `inc`, one message per task: tasks/s, the client's peak RSS and the
    /// throughput beside a 20,000-task map's. Only when asked for (not part of the default run).
    Million,
    /// A `map` of 1,000 `straggle` tasks of 5 ms, 1 % of runs taking 100 times longer, with
    /// hedging (after 50 ms) against the same map without: per-task completion p50/p99 ms,
    /// seconds, and the hedge copies it cost. Only when asked for (not part of the default run).
    Stragglers,
}

const TASKS_PER_S: Metric = Metric {
    key: "tasks_per_s",
    ratio_key: "ratio",
    label: "tasks/s",
};

impl Workload {
    /// Every workload, in the order they are listed.
    const ALL: [Workload; 6] = [
        Workload::Throughput,
        Workload::Latency,
        Workload::Dag,
        Workload::Payload,
        Workload::Scale,
        Workload::Fine,
    ];

    /// Where it runs: `payload` last, because the allocators of the client and the workers keep
    /// much of the memory of its MiB-sized buffers, which would hide the peak RSS of `scale`.
    fn run_order(self) -> u8 {
        match self {
            Workload::Payload => 1,
            _ => 0,
        }
    }

    /// Its name in flags and `RESULT` lines.
    fn name(self) -> &'static str {
        match self {
            Workload::Throughput => "throughput",
            Workload::Latency => "latency",
            Workload::Dag => "dag",
            Workload::Payload => "payload",
            Workload::Scale => "scale",
            Workload::Cpu => "cpu",
            Workload::Fine => "fine",
            Workload::Million => "million",
            Workload::Stragglers => "stragglers",
        }
    }

    /// The figures compared with the floor; the first is the main one.
    fn metrics(self) -> &'static [Metric] {
        match self {
            Workload::Throughput
            | Workload::Scale
            | Workload::Cpu
            | Workload::Fine
            | Workload::Million => &[TASKS_PER_S],
            Workload::Latency => &[
                Metric {
                    key: "p50_us",
                    ratio_key: "ratio",
                    label: "p50 µs",
                },
                Metric {
                    key: "p90_us",
                    ratio_key: "ratio_p90",
                    label: "p90 µs",
                },
                Metric {
                    key: "p99_us",
                    ratio_key: "ratio_p99",
                    label: "p99 µs",
                },
            ],
            Workload::Dag => &[Metric {
                key: "seconds",
                ratio_key: "ratio",
                label: "seconds",
            }],
            Workload::Payload => &[Metric {
                key: "mib_per_s",
                ratio_key: "ratio",
                label: "MiB/s",
            }],
            Workload::Stragglers => &[
                Metric {
                    key: "p99_ms",
                    ratio_key: "ratio",
                    label: "p99 ms",
                },
                Metric {
                    key: "p50_ms",
                    ratio_key: "ratio_p50",
                    label: "p50 ms",
                },
                Metric {
                    key: "seconds",
                    ratio_key: "ratio_seconds",
                    label: "seconds",
                },
            ],
        }
    }

    /// What it runs at `sizes`, for the table.
    fn size(self, sizes: &Sizes) -> String {
        match self {
            Workload::Throughput => format!("{} inc", thousands(sizes.throughput as u64)),
            Workload::Latency => format!("{} round trips", thousands(sizes.latency as u64)),
            Workload::Dag => format!(
                "{} tasks, {} leaves",
                thousands(2 * sizes.dag_leaves as u64 - 1),
                thousands(sizes.dag_leaves as u64)
            ),
            Workload::Payload if sizes.payload_bytes % (1 << 20) == 0 => format!(
                "{} x {} MiB",
                thousands(sizes.payloads as u64),
                sizes.payload_bytes >> 20
            ),
            Workload::Payload => format!(
                "{} x {} KiB",
                thousands(sizes.payloads as u64),
                sizes.payload_bytes >> 10
            ),
            Workload::Scale => format!("{} inc", thousands(sizes.scale as u64)),
            Workload::Fine => format!(
                "{} inc, {} per message",
                thousands(sizes.fine as u64),
                fine::BATCH
            ),
            Workload::Million => format!("{} inc", thousands(sizes.million as u64)),
            Workload::Stragglers => format!(
                "{} straggle, {}‰ of runs {} ms instead of {} ms; floor: unhedged",
                thousands(sizes.stragglers as u64),
                stragglers::PER_MILLE,
                stragglers::SLOW_MS,
                stragglers::MS
            ),
            Workload::Cpu => format!(
                "{} spin_hash x {} rounds",
                thousands(sizes.cpu as u64),
                thousands(u64::from(cpu::ROUNDS))
            ),
        }
    }
}

/// How big each workload is.
struct Sizes {
    throughput: usize,
    latency: usize,
    dag_leaves: usize,
    payloads: usize,
    payload_bytes: usize,
    scale: usize,
    cpu: usize,
    fine: usize,
    million: usize,
    stragglers: usize,
    idle: Duration,
}

impl Sizes {
    /// The canonical sizes (docs/benchmarks.md).
    const FULL: Sizes = Sizes {
        throughput: 20_000,
        latency: 2_000,
        dag_leaves: 1_024,
        payloads: 1_000,
        payload_bytes: 1 << 20,
        scale: 200_000,
        cpu: 2_000,
        fine: 200_000,
        million: 1_000_000,
        stragglers: 1_000,
        idle: Duration::from_secs(2),
    };

    /// Just enough for CI to see that every workload still runs.
    const SMOKE: Sizes = Sizes {
        throughput: 200,
        latency: 20,
        dag_leaves: 16,
        payloads: 10,
        payload_bytes: 64 << 10,
        scale: 400,
        cpu: 20,
        fine: 400,
        million: 1_000,
        stragglers: 50,
        idle: Duration::from_millis(500),
    };
}

pub(crate) async fn run(global: &Global, args: BenchArgs) -> Result<ExitCode> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let started = Instant::now();
    let mut workloads = if args.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.workloads.clone()
    };
    workloads.sort_by_key(|w| (w.run_order(), *w));
    workloads.dedup();
    let sizes = if args.smoke {
        Sizes::SMOKE
    } else {
        Sizes::FULL
    };
    if cfg!(debug_assertions) && !args.smoke {
        eprintln!("bench: warning: this is a debug build; build with --release for real figures");
    }
    let cluster = if args.use_running {
        if args.workers != 2 {
            eprintln!("bench: --workers only sizes the floor with --use-running");
        }
        Cluster::running(output::settings(global)?).await?
    } else {
        eprintln!(
            "bench: starting RabbitMQ, Redis and {} worker(s)",
            args.workers
        );
        let shape = cluster::Shape {
            concurrency: args.concurrency.map(|c| c as usize),
            queue_type: if args.quorum {
                rask_common::settings::QueueType::Quorum
            } else {
                rask_common::settings::QueueType::Classic
            },
            shards: args.shards,
            events: args.events || !args.no_events,
            inline_limit: args.inline_limit,
            blobs: args.blobs,
            continuation: !args.no_continuation,
            in_memory: args.in_memory,
            runtime_threads: args.runtime_threads.unwrap_or(0),
        };
        if args.no_events {
            eprintln!("bench: task events are off (--no-events)");
        } else {
            eprintln!("bench: task events are on (the default; --no-events turns them off)");
        }
        if args.no_continuation {
            eprintln!("bench: workers publish every graph task they release");
        }
        if let Some(c) = shape.concurrency {
            eprintln!("bench: each worker runs {c} task(s) at once");
        }
        if let Some(n) = args.runtime_threads.filter(|n| *n > 0) {
            eprintln!("bench: each worker's runtime has {n} thread(s)");
        }
        if args.quorum {
            eprintln!("bench: the task queues are quorum queues (no priorities)");
        }
        if args.shards > 1 {
            eprintln!("bench: tasks are spread over {} queue shards", args.shards);
        }
        Cluster::start(args.workers, &shape).await?
    };
    let kind = cluster.kind();
    let measured = measure(&cluster, &args, &workloads, &sizes).await;
    let kept = cluster.stop(measured.is_err()).await;
    let (mut rows, idle) = match (measured, kept) {
        (Ok(measured), Ok(_)) => measured,
        (Err(e), Ok(Some(dir))) => return Err(e.context(format!("logs are in {}", dir.display()))),
        (Err(e), _) => return Err(e),
        (Ok(measured), Err(e)) => {
            // The figures stand; what is left running stops when this process exits.
            eprintln!("bench: warning: stopping the cluster failed: {e:#}");
            measured
        }
    };
    rows.sort_by_key(|row| row.workload);
    let context = Context {
        cluster: kind,
        workers: args.workers,
        runs: args.runs,
        smoke: args.smoke,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        seconds: started.elapsed().as_secs_f64(),
        events: match (args.use_running, args.no_events) {
            (true, _) => "as deployed",
            (false, true) => "off",
            (false, false) => "on",
        },
        files: match (args.use_running, args.in_memory) {
            (true, _) => "as deployed",
            (false, true) => "shared memory",
            (false, false) => "temp dir",
        },
        blobs: match (args.use_running, args.blobs) {
            (true, _) => "as deployed",
            (false, true) => "on",
            (false, false) => "off",
        },
        runtime_threads: (!args.use_running).then(|| args.runtime_threads.unwrap_or(0)),
    };
    if args.json {
        println!("{}", report::json(&context, &rows, idle.as_ref()));
    } else {
        println!();
        print!("{}", report::table(&context, &rows, idle.as_ref()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Measures idle workers, then runs each workload `runs` times, each run a pair of rask and the
/// floor back to back (rask first in odd runs, the floor first in even ones, so neither always
/// meets the machine in the other's wake), printing its `RESULT` lines as soon as it is done.
async fn measure(
    cluster: &Cluster,
    args: &BenchArgs,
    workloads: &[Workload],
    sizes: &Sizes,
) -> Result<(Vec<Row>, Option<Idle>)> {
    let client = Client::connect(cluster.settings.clone())
        .await
        .context("connecting the client")?;
    let workers = cluster.worker_pids();
    let idle = if workers.is_empty() {
        None
    } else {
        let idle = measure_idle(&workers, sizes.idle).await?;
        println!("{}", idle.result_line());
        Some(idle)
    };
    let mut floor = Floor::new(
        &cluster.settings,
        format!("{}-floor", cluster.run_id),
        args.workers,
    )?;
    let probe = Probe {
        workers,
        servers: cluster.server_pids(),
    };
    let mut rows = Vec::with_capacity(workloads.len());
    for &workload in workloads {
        let mut rask_runs = Vec::new();
        let mut floor_runs = Vec::new();
        for run in 1..=args.runs {
            let name = workload.name();
            let of = if args.runs > 1 {
                format!(" (run {run} of {})", args.runs)
            } else {
                String::new()
            };
            let rask_first = run % 2 == 1;
            for rask_turn in [rask_first, !rask_first] {
                if rask_turn {
                    eprintln!("bench: {name}: rask{of}");
                    let figures = probe
                        .around(true, run_rask(workload, &client, sizes))
                        .await
                        .with_context(|| format!("{name} on rask"))?;
                    rask_runs.push(figures);
                } else if workload == Workload::Stragglers {
                    // Its "floor" is rask without hedging.
                    eprintln!("bench: {name}: rask without hedging{of}");
                    let figures = probe
                        .around(true, stragglers::unhedged(&client, sizes.stragglers))
                        .await
                        .with_context(|| format!("{name} on rask without hedging"))?;
                    floor_runs.push(figures);
                } else {
                    eprintln!("bench: {name}: floor{of}");
                    let figures = probe
                        .around(false, run_floor(workload, &mut floor, sizes))
                        .await
                        .with_context(|| format!("{name} on the floor"))?;
                    floor_runs.push(figures);
                }
            }
        }
        let row = Row::new(workload, workload.size(sizes), &rask_runs, &floor_runs);
        for line in row.result_lines() {
            println!("{line}");
        }
        rows.push(row);
    }
    client.close().await?;
    Ok((rows, idle))
}

async fn run_rask(workload: Workload, client: &Client, sizes: &Sizes) -> Result<Figures> {
    match workload {
        Workload::Throughput => throughput::rask(client, sizes.throughput).await,
        Workload::Latency => latency::rask(client, sizes.latency).await,
        Workload::Dag => dag::rask(client, sizes.dag_leaves).await,
        Workload::Payload => payload::rask(client, sizes.payloads, sizes.payload_bytes).await,
        Workload::Scale => scale::rask(client, sizes.scale).await,
        Workload::Cpu => cpu::rask(client, sizes.cpu).await,
        Workload::Fine => fine::rask(client, sizes.fine).await,
        Workload::Million => million::rask(client, sizes.million).await,
        Workload::Stragglers => stragglers::hedged(client, sizes.stragglers).await,
    }
}

async fn run_floor(workload: Workload, floor: &mut Floor, sizes: &Sizes) -> Result<Figures> {
    match workload {
        Workload::Throughput => throughput::floor(floor, sizes.throughput).await,
        Workload::Latency => latency::floor(floor, sizes.latency).await,
        Workload::Dag => dag::floor(floor, sizes.dag_leaves).await,
        Workload::Payload => payload::floor(floor, sizes.payloads, sizes.payload_bytes).await,
        Workload::Scale => scale::floor(floor, sizes.scale).await,
        Workload::Cpu => cpu::floor(floor, sizes.cpu).await,
        Workload::Fine => fine::floor(floor, sizes.fine).await,
        Workload::Million => million::floor(floor, sizes.million).await,
        Workload::Stragglers => {
            bail!("stragglers compares rask with and without hedging: no floor run")
        }
    }
}

/// The processes measured around each run.
struct Probe {
    workers: Vec<Pid>,
    /// RabbitMQ and Redis, when the cluster is ours.
    servers: Option<(Pid, Pid)>,
}

impl Probe {
    /// Runs `work`, adding to its figures its wall time (`wall_s`, set-up and clean-up included),
    /// the CPU seconds each process used meanwhile and the
    /// peak RSS of this process (the client) and, when `workers`, of the largest worker.
    async fn around(
        &self,
        workers: bool,
        work: impl Future<Output = Result<Figures>>,
    ) -> Result<Figures> {
        let mut reset = vec![Pid::SELF];
        if workers {
            reset.extend(&self.workers);
        }
        for pid in reset {
            // Without a reset (a kernel before 4.0) the peak is since the process started.
            if let Err(e) = pid.reset_peak() {
                tracing::warn!(?pid, error = %e, "cannot reset the peak RSS");
            }
        }
        let before = self.cpu()?;
        let started = Instant::now();
        let mut figures = work.await?;
        figures.set("wall_s", started.elapsed().as_secs_f64());
        let after = self.cpu()?;
        for ((key, before), (_, after)) in before.into_iter().zip(after) {
            figures.set(key, after - before);
        }
        figures.set("client_peak_rss_mib", Pid::SELF.peak_rss_mib()?);
        if workers && !self.workers.is_empty() {
            let mut peak: f64 = 0.0;
            for pid in &self.workers {
                peak = peak.max(pid.peak_rss_mib()?);
            }
            figures.set("worker_peak_rss_mib", peak);
        }
        Ok(figures)
    }

    /// CPU seconds used so far by the client, the workers (together), RabbitMQ and Redis.
    fn cpu(&self) -> Result<Vec<(&'static str, f64)>> {
        let mut cpu = vec![("cpu_client_s", Pid::SELF.cpu_seconds()?)];
        if !self.workers.is_empty() {
            let mut workers = 0.0;
            for pid in &self.workers {
                workers += pid.cpu_seconds()?;
            }
            cpu.push(("cpu_workers_s", workers));
        }
        if let Some((rabbitmq, redis)) = self.servers {
            cpu.push(("cpu_rabbitmq_s", rabbitmq.cpu_seconds()?));
            cpu.push(("cpu_redis_s", redis.cpu_seconds()?));
        }
        Ok(cpu)
    }
}

/// RSS and CPU of each worker over `window` with nothing to do.
async fn measure_idle(workers: &[Pid], window: Duration) -> Result<Idle> {
    tokio::time::sleep(SETTLE).await;
    let mut before = Vec::with_capacity(workers.len());
    for pid in workers {
        before.push(pid.cpu_seconds()?);
    }
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut idle = Vec::with_capacity(workers.len());
    for (pid, before) in workers.iter().zip(before) {
        idle.push(IdleWorker {
            pid: pid.0.unwrap_or_else(std::process::id),
            rss_mib: pid.rss_mib()?,
            cpu_percent: (pid.cpu_seconds()? - before) / elapsed * 100.0,
        });
    }
    Ok(Idle {
        window,
        workers: idle,
    })
}

/// Deletes the stored results of `futures`, so Redis does not grow from workload to workload.
/// `map_with(task, args, options)` then `gather` (for at most [`PATIENCE`]): the values, the
/// futures (to release once the values are checked) and the seconds from the first submit to
/// the last result. Workloads that compare with a floor of one message per task pass
/// [`unbatched`] options, so that their figures mean what they meant before batches.
async fn map_and_gather<T: rask::Task>(
    client: &Client,
    task: T,
    args: impl IntoIterator<Item = T::Args>,
    options: &rask::TaskOptions,
) -> Result<(Vec<T::Output>, Vec<rask::Future<T::Output>>, f64)> {
    let started = Instant::now();
    let futures = client
        .map_with(task, args, options)
        .await
        .context("submitting")?;
    let values = client
        .gather(&futures)
        .timeout(PATIENCE)
        .await
        .context("gathering")?;
    Ok((values, futures, started.elapsed().as_secs_f64()))
}

/// Options of one message per task (no batches).
fn unbatched() -> rask::TaskOptions {
    rask::TaskOptions::new().batch(1)
}

async fn release<T>(client: &Client, futures: &[rask::Future<T>]) -> Result<()> {
    for chunk in futures.chunks(RELEASE_KEYS) {
        let keys: Vec<rask::TaskKey> = chunk.iter().map(|f| f.key().clone()).collect();
        client.release(&keys).await.context("releasing results")?;
    }
    Ok(())
}

/// `len` pseudo-random bytes determined by `seed` (splitmix64): distinct payloads that a checker
/// can make again instead of keeping them.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_repeatable_and_distinct() {
        assert_eq!(random_bytes(1, 100), random_bytes(1, 100));
        assert_ne!(random_bytes(1, 100), random_bytes(2, 100));
        assert_eq!(random_bytes(3, 13).len(), 13);
        assert_eq!(&random_bytes(3, 64)[..13], random_bytes(3, 13).as_slice());
    }

    #[test]
    fn every_workload_has_a_main_figure_named_ratio() {
        for workload in Workload::ALL {
            assert_eq!(workload.metrics()[0].ratio_key, "ratio");
            assert!(Sizes::FULL.dag_leaves.is_power_of_two());
            assert!(Sizes::SMOKE.dag_leaves.is_power_of_two());
        }
    }
}
