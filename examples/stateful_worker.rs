//! A worker binary with state of its own and tasks that take their context: the state (here a
//! list of stop words; in real life a model or a connection pool) is built once when the worker
//! starts and shared by every task it runs; a task that launches tasks waits for them without
//! holding the worker's concurrency slot.
//!
//! ```text
//! cargo run -p rask-cli -- local up --workers 0                    # RabbitMQ and Redis only
//! cargo run -p rask-examples --example stateful_worker         # this worker; Ctrl-C stops it
//! cargo run -p rask-cli -- submit count_keywords '"to be or not to be"'   # in another terminal
//! cargo run -p rask-cli -- submit count_keywords_in '["to be", "or not", "to be"]'
//! ```
//!
//! Settings come from `rask.toml` and `RASK_*` variables; the defaults match `rask local up`.

use std::collections::BTreeSet;

use rask::{ContextExt, State, TaskContext};
use rask_common::Settings;
use rask_worker::{Registry, Worker};

/// The worker's state: built once per worker process, shared by its tasks.
struct StopWords(BTreeSet<String>);

impl StopWords {
    /// Loads the list (a real worker would read a file or a service here).
    async fn load() -> anyhow::Result<Self> {
        let words = ["a", "an", "and", "be", "not", "or", "the", "to"];
        Ok(StopWords(words.into_iter().map(str::to_owned).collect()))
    }
}

rask::task! {
    /// The words of `text` that are not stop words. Takes the worker's state by reference;
    /// only `text` travels in the message.
    fn count_keywords(stop: &State<StopWords>, text: String) -> usize {
        text.split_whitespace().filter(|w| !stop.0.contains(*w)).count()
    }
}

rask::task! {
    /// [`count_keywords`] over many texts: one task per text, launched through the worker's
    /// client, summed. While it waits (`ctx.gather`), the worker runs other tasks in its slot,
    /// such as the ones it launched, even with a concurrency of 1.
    async fn count_keywords_in(ctx: &TaskContext, texts: Vec<String>) -> Result<usize, rask::Error> {
        let client = ctx.client().await?;
        let counts = client.map(count_keywords, texts.into_iter().map(|t| (t,))).await?;
        let counts = ctx.gather(&counts).await?;
        eprintln!("{} (attempt {}) on {}: {counts:?}", ctx.key(), ctx.attempt(), ctx.worker_id());
        Ok(counts.into_iter().sum())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let registry = Registry::with_builtins()
        .with_state(StopWords::load)
        .with::<count_keywords>()
        .with::<count_keywords_in>();
    let worker = Worker::new(settings, registry);
    eprintln!("worker {}; Ctrl-C or SIGTERM stops it", worker.id());
    // A state that cannot be built stops the worker here with `Error::State` (exit code 78
    // from the stock binary's mapping, `Error::exit_code`).
    worker.run(rask_worker::shutdown_signal()).await?;
    Ok(())
}
