//! A worker binary with a pool of its own, resources and state: it serves pool `gpu` only,
//! declares two `gpu` slots (so at most two of its tasks that need one run at once), builds its
//! state once at start (here one "device" per slot; in real life a model loaded onto each GPU)
//! and shares it with every task, which picks its device by the slot its context says it holds.
//! Run with `submit TEXT...`, the same binary is the client: it waits for a worker of the pool,
//! then submits one task per text to pool `gpu`, each needing one `gpu` slot.
//!
//! ```text
//! cargo run -p rask-cli -- local up --workers 0                 # RabbitMQ and Redis only
//! cargo run -p rask-examples --example pools                # the gpu worker; Ctrl-C stops it
//! cargo run -p rask-examples --example pools -- submit "a cat" "two dogs" "a red fox"
//! ```
//!
//! The stock worker serves a pool the same way (`rask-worker --pools gpu --resources gpu=2`, or
//! `RASK_POOLS=gpu RASK_RESOURCES=gpu=2`), and `rask local up --pool gpu:1:gpu=2` starts one;
//! `rask submit --pool gpu --resources gpu=1 ...` submits from the command line. Settings come
//! from `rask.toml` and `RASK_*` variables; the defaults match `rask local up`.

use std::time::Duration;

use rask::{Client, Pool, Resources, State, TaskContext, TaskOptions};
use rask_common::Settings;
use rask_worker::{Registry, Worker};

/// The pool this worker serves and its tasks go to.
const POOL: &str = "gpu";
/// The `gpu` slots this worker declares.
const GPUS: u64 = 2;

/// The worker's state: one device per `gpu` slot, set up once per worker process (a real
/// worker would load its model onto each GPU here, which takes seconds, not once per task).
struct Devices(Vec<String>);

impl Devices {
    async fn open(count: u64) -> anyhow::Result<Self> {
        let devices = (0..count).map(|index| format!("cuda:{index}")).collect();
        eprintln!("devices opened (once for this worker)");
        Ok(Devices(devices))
    }
}

rask::task! {
    /// "Embeds" `text` on the device of the `gpu` slot this run holds: the worker assigns the
    /// slot (0 or 1 here) and no other run holds it meanwhile. Only `text` travels in the
    /// message; the context and the state are the worker's.
    fn embed(ctx: &TaskContext, devices: &State<Devices>, text: String) -> Result<String, String> {
        let slot = ctx
            .slots()
            .get("gpu")
            .and_then(|slots| slots.first())
            .ok_or("submitted without a gpu need: TaskOptions::resources([(\"gpu\", 1)])")?;
        let device = devices.0.get(*slot as usize).ok_or("no device for the slot")?;
        Ok(format!("{} chars of {text:?} on {device} of worker {}", text.len(), ctx.worker_id()))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None => serve().await,
        Some("submit") => submit(args.collect()).await,
        Some(other) => {
            anyhow::bail!("unknown command {other:?}: run with no arguments or `submit TEXT...`")
        }
    }
}

/// The worker: pool `gpu` only and [`GPUS`] slots (set here, whatever `RASK_POOLS` and
/// `RASK_RESOURCES` say), the [`Devices`] built once.
async fn serve() -> anyhow::Result<()> {
    let settings = Settings {
        pools: vec![Pool::new(POOL)?],
        resources: Resources::from_iter([("gpu", GPUS)]),
        ..Settings::load()?
    };
    let registry = Registry::new()
        .with_state(|| Devices::open(GPUS))
        .with::<embed>();
    let worker = Worker::new(settings, registry);
    eprintln!(
        "worker {} of pool {POOL} with gpu={GPUS}; Ctrl-C or SIGTERM stops it",
        worker.id()
    );
    worker.run(rask_worker::shutdown_signal()).await?;
    Ok(())
}

/// The client: one `embed` per text on pool `gpu`, each needing one `gpu` slot.
async fn submit(texts: Vec<String>) -> anyhow::Result<()> {
    let client = Client::connect(Settings::load()?).await?;
    // Tasks would wait in the pool's queue until a worker of the pool starts: say so instead.
    client
        .wait_for_workers(1)
        .pool(POOL)
        .timeout(Duration::from_secs(10))
        .await?;
    let options = TaskOptions::new().pool(POOL).resources([("gpu", 1)]);
    let futures = client
        .map_with(embed, texts.into_iter().map(|text| (text,)), &options)
        .await?;
    for line in client.gather(&futures).await? {
        println!("{line}");
    }
    client.close().await?;
    Ok(())
}
