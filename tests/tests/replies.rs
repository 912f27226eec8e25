//! Direct replies (`rask_common::reply`): a `call` takes its value from the reply the worker
//! sends with the stored outcome and reads nothing from Redis; an outcome too large for a reply
//! is read after its announcement as before; a worker whose Redis user may not publish replies
//! still stores outcomes. Against one Redis: `MONITOR` shows who reads what.
//! (That a reply carries the outcome as stored is in `core.rs`, which also runs on clusters.)

use futures::StreamExt;
use rask::builtins::{echo, inc};
use rask_common::Store;
use rask_tests::{TestEnv, PATIENCE};
use rask_worker::Registry;

/// One command Redis ran, as `MONITOR` shows it.
#[derive(Debug)]
struct Seen {
    /// Run by a script (`lua`) rather than sent by a client.
    by_script: bool,
    command: String,
    line: String,
}

impl Seen {
    /// `line` of `MONITOR`: `1700000000.123456 [0 127.0.0.1:5000] "GET" "key"`, or `[0 lua]`.
    fn parse(line: String) -> Option<Seen> {
        let (source, rest) = line.split_once("] \"")?;
        let by_script = source.ends_with(" lua");
        let command = rest.split('"').next()?.to_ascii_uppercase();
        Some(Seen {
            by_script,
            command,
            line,
        })
    }

    /// Whether a client (not a script) read `key` with `GET` or `MGET`.
    fn client_read(&self, key: &str) -> bool {
        !self.by_script
            && matches!(self.command.as_str(), "GET" | "MGET")
            && self.line.contains(&format!("\"{key}\""))
    }
}

/// What Redis runs from now until it runs `EXISTS {marker}` (sent by `end`).
async fn monitor(env: &TestEnv) -> redis::aio::Monitor {
    let client = redis::Client::open(env.settings.redis_url.as_str()).unwrap();
    client.get_async_monitor().await.unwrap()
}

/// Ends the watch of `monitor`: sends a marker command and returns every command seen before it.
async fn seen_until_now(env: &TestEnv, store: &Store, monitor: redis::aio::Monitor) -> Vec<Seen> {
    let marker = format!("{}:monitor-end", env.settings.key_prefix);
    let _: bool = redis::cmd("EXISTS")
        .arg(&marker)
        .query_async(&mut store.connection())
        .await
        .unwrap();
    let mut lines = monitor.into_on_message::<String>();
    let mut seen = Vec::new();
    let watch = async {
        while let Some(line) = lines.next().await {
            if line.contains(&format!("\"{marker}\"")) {
                return;
            }
            seen.extend(Seen::parse(line));
        }
        panic!("MONITOR ended before the marker");
    };
    tokio::time::timeout(PATIENCE, watch)
        .await
        .expect("the marker shows in MONITOR");
    seen
}

#[tokio::test]
async fn a_call_takes_its_value_from_the_reply_and_reads_no_result() {
    let env = TestEnv::new("replies").await;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let store = Store::connect(&env.settings).await.unwrap();
    // One call first, so that connections and subscriptions are all made.
    assert_eq!(client.call(inc, (0,)).await.unwrap(), 1);

    let watch = monitor(&env).await;
    let mut calls = Vec::new();
    for i in 1..=5 {
        let value = tokio::time::timeout(PATIENCE, client.call(inc, (i,)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(value, i + 1);
        calls.push(i);
    }
    // Over the reply limit: announced only, and read.
    let big = rmpv::Value::Binary(vec![7; rask_common::reply::REPLY_LIMIT + 1]);
    let echoed = tokio::time::timeout(PATIENCE, client.call(echo, (big.clone(),)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, big);
    let seen = seen_until_now(&env, &store, watch).await;

    let result_keys = |function: &str| -> Vec<String> {
        let prefix = format!("{}:result:{function}-", env.settings.key_prefix);
        let mut keys: Vec<String> = seen
            .iter()
            .filter(|s| s.command == "SET" && !s.by_script)
            .filter_map(|s| {
                let start = s.line.find(&prefix)?;
                let key = &s.line[start..];
                Some(key[..key.find('"')?].to_owned())
            })
            .collect();
        keys.dedup();
        keys
    };
    let small = result_keys("inc");
    assert_eq!(
        small.len(),
        calls.len(),
        "one result stored per call: {seen:#?}"
    );
    for key in &small {
        let replied = seen
            .iter()
            .any(|s| s.command == "EVAL" && s.line.contains(&format!("\"{key}\"")));
        assert!(replied, "the worker replies with {key}");
        let read: Vec<&Seen> = seen.iter().filter(|s| s.client_read(key)).collect();
        assert!(read.is_empty(), "{key} came by reply, not read: {read:#?}");
    }
    let large = result_keys("echo");
    assert_eq!(large.len(), 1, "{seen:#?}");
    assert!(
        seen.iter().any(|s| s.client_read(&large[0])),
        "an outcome over the reply limit is read: {seen:#?}"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_worker_that_may_not_reply_still_stores_and_the_call_reads_its_value() {
    let env = TestEnv::new("noreply").await;
    // The worker's Redis user may publish announcements and revocations, not replies.
    let prefix = &env.settings.key_prefix;
    let rules = [
        "~*".to_owned(),
        "resetchannels".to_owned(),
        format!("&{prefix}:done"),
        format!("&{prefix}:revocations"),
        "+@all".to_owned(),
    ];
    let settings = env.as_redis_user(&format!("{prefix}-w"), &rules).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = rask_worker::Worker::new(settings, Registry::with_builtins());
    let running = tokio::spawn(worker.run(stop.clone().cancelled_owned()));

    let client = env.client().await;
    for i in 0..3 {
        let value = tokio::time::timeout(PATIENCE, client.call(inc, (i,)))
            .await
            .expect("the call ends: the refused reply did not stop the store")
            .unwrap();
        assert_eq!(value, i + 1);
    }
    stop.cancel();
    running.await.unwrap().unwrap();
}
