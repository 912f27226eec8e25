//! Task states and events against real servers: `client.task_info` and `rask inspect` tell
//! each state (queued, waiting, running, succeeded, failed, cancelled, unknown) with who
//! queued a task, where it ran and how it ended; `rask events` lists the lifecycle from the
//! bounded stream; the calls of a batch message are recorded once per batch and read each by
//! its key; the `events` setting off records nothing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rask::builtins::{add, fail, inc, sleep_ms};
use rask::{EventKind, TaskKey, TaskOptions, TaskState};
use rask_tests::{TestEnv, PATIENCE};
use rask_worker::Registry;

/// The event stream's length and how many entries were ever added to it.
async fn stream_lengths(env: &TestEnv) -> (u64, u64) {
    let client = redis::Client::open(env.settings.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let name = format!("{}:events", env.settings.key_prefix);
    // No stream yet: an error, counted as empty.
    let map: HashMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(&name)
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    let int = |name: &str| match map.get(name) {
        Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap(),
        _ => 0,
    };
    (int("length"), int("entries-added"))
}

#[tokio::test]
async fn task_info_tells_every_state() {
    let mut env = TestEnv::new("states").await;
    env.settings.events = true;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;

    let done = client.submit(inc, (41,)).await.unwrap();
    let failed = client.submit(fail, ("no luck 7".into(),)).await.unwrap();
    assert_eq!(done.result_within(PATIENCE).await.unwrap(), 42);
    assert!(failed.result_within(PATIENCE).await.is_err());
    // Queued events are written in the background, after publishing, and a worker's within a
    // flush interval of the result.
    env.eventually("the queued and finished records", || async {
        let info = client.task_info(done.key()).await.unwrap();
        info.queued_at.is_some() && info.finished_at.is_some()
    })
    .await;
    let info = client.task_info(done.key()).await.unwrap();
    assert_eq!(info.state, TaskState::Succeeded);
    assert_eq!(info.function.as_deref(), Some("inc"));
    assert!(info.queued_by.is_some() && info.queued_at.is_some());
    let (started, finished) = (info.started_at.unwrap(), info.finished_at.unwrap());
    assert!(info.queued_at.unwrap() <= started && started <= finished);
    assert!(info.worker.is_some() && info.slot.is_some());
    assert_eq!(info.attempt, Some(0));
    let info = client.task_info(failed.key()).await.unwrap();
    assert_eq!(info.state, TaskState::Failed);
    assert_eq!(info.error.as_deref(), Some("no luck 7"));
    assert_eq!(info.failure, Some(rask::FailureKind::Failed));

    // Long enough to be seen running; a graph task waits for it.
    let long = client.submit(sleep_ms, (60_000,)).await.unwrap();
    let waiting = client
        .persist(&add.delayed(rask::Arg::key(long.key().clone()), 1))
        .await
        .unwrap();
    env.eventually("the long task to show as running", || async {
        client.task_info(long.key()).await.unwrap().state == TaskState::Running
    })
    .await;
    let info = client.task_info(long.key()).await.unwrap();
    assert!(info.worker.is_some() && info.started_at.is_some() && info.slot.is_some());
    let info = client.task_info(waiting.key()).await.unwrap();
    assert_eq!(info.state, TaskState::Waiting);
    assert_eq!(info.waiting_for, vec![long.key().clone()]);

    // Queued: it starts in a minute.
    let later = TaskOptions::new().countdown(Duration::from_secs(60));
    let queued = client.submit_with(inc, (1,), &later).await.unwrap();
    env.eventually("the delayed task to show as queued", || async {
        client.task_info(queued.key()).await.unwrap().state == TaskState::Queued
    })
    .await;
    let info = client.task_info(queued.key()).await.unwrap();
    assert_eq!(
        info.queued_by,
        client.task_info(done.key()).await.unwrap().queued_by
    );
    assert!(info.started_at.is_none());

    client.cancel(&[queued]).await.unwrap();
    let cancelled = client
        .cancel(std::slice::from_ref(&long))
        .force()
        .await
        .unwrap();
    assert_eq!(cancelled, 1);
    let info = client.task_info(long.key()).await.unwrap();
    assert_eq!(info.state, TaskState::Cancelled);

    let unknown = TaskKey::new("inc-never-submitted").unwrap();
    let info = client.task_info(&unknown).await.unwrap();
    assert_eq!(info.state, TaskState::Unknown);

    // The CLI prints the same.
    let out = env
        .rask(
            &["inspect", "--json", done.key().as_str(), unknown.as_str()],
            "",
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["key"], done.key().as_str());
    assert_eq!(lines[0]["state"], "succeeded");
    assert_eq!(lines[0]["function"], "inc");
    assert_eq!(lines[1]["state"], "unknown");
    let out = env.rask(&["inspect", failed.key().as_str()], "").await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("{}  failed", failed.key())),
        "{text}"
    );
    assert!(text.contains("no luck 7"), "{text}");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn events_list_each_task_lifecycle() {
    let mut env = TestEnv::new("events").await;
    env.settings.events = true;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let futures = client.map(inc, (0..50).map(|i| (i,))).await.unwrap();
    client.gather(&futures).timeout(PATIENCE).await.unwrap();
    let other = client.submit(fail, ("bad 3".into(),)).await.unwrap();
    assert!(other.result_within(PATIENCE).await.is_err());
    let keys: HashSet<String> = futures.iter().map(|f| f.key().to_string()).collect();

    // Queued events are written in the background: wait for all of them.
    env.eventually("every event to be recorded", || async {
        client.events(None, None, 10_000).await.unwrap().len() >= 102
    })
    .await;
    let out = env
        .rask(&["events", "--json", "--function", "inc"], "")
        .await;
    assert!(out.status.success(), "{out:?}");
    let mut kinds: HashMap<String, Vec<String>> = HashMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["function"], "inc");
        let key = event["key"].as_str().unwrap().to_owned();
        kinds
            .entry(key)
            .or_default()
            .push(event["kind"].as_str().unwrap().to_owned());
    }
    assert_eq!(kinds.keys().cloned().collect::<HashSet<_>>(), keys);
    for (key, kinds) in &kinds {
        let mut kinds = kinds.clone();
        kinds.sort();
        assert_eq!(kinds, ["queued", "succeeded"], "events of {key}");
    }
    let events = client.events(None, None, 10_000).await.unwrap();
    let failure = events
        .iter()
        .find(|e| e.key == *other.key() && e.kind == EventKind::Failed)
        .expect("a failed event");
    assert_eq!(failure.error.as_deref(), Some("bad 3"));
    assert!(failure.worker.is_some() && failure.duration_ms.is_some());

    // --since: only what is newer; an empty window prints nothing.
    let out = env.rask(&["events", "--since", "1ms"], "").await;
    assert!(out.status.success(), "{out:?}");
    let after = client
        .events(Some(&events.last().unwrap().id), None, 10)
        .await;
    assert!(after.unwrap().is_empty());
    worker.stop().await.unwrap();
}

/// The distinct fields of the records hashes of `kind` (`queued` or `states`), over all
/// buckets: how many tasks or batches have records.
async fn record_fields(env: &TestEnv, kind: &str) -> usize {
    let client = redis::Client::open(env.settings.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}:{kind}:*", env.settings.key_prefix);
    let names: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut fields = HashSet::new();
    for name in names {
        let of_bucket: Vec<String> = redis::cmd("HKEYS")
            .arg(&name)
            .query_async(&mut conn)
            .await
            .unwrap();
        fields.extend(of_bucket);
    }
    fields.len()
}

#[tokio::test]
async fn the_calls_of_a_batch_are_recorded_once_and_each_is_read_by_key() {
    let mut env = TestEnv::new("events-batch").await;
    env.settings.events = true;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    // 250 calls in 3 messages (100, 100, 50), and 2 failing calls in one more.
    let batch = TaskOptions::new().batch(100);
    let futures = client
        .map_with(inc, (0..250).map(|i| (i,)), &batch)
        .await
        .unwrap();
    let failing = client
        .map_with(
            fail,
            ["first 1".to_owned(), "second 2".to_owned()].map(|m| (m,)),
            &batch,
        )
        .await
        .unwrap();
    client.gather(&futures).timeout(PATIENCE).await.unwrap();
    for future in &failing {
        assert!(future.result_within(PATIENCE).await.is_err());
    }
    let keys: Vec<TaskKey> = futures.iter().map(|f| f.key().clone()).collect();
    env.eventually("every call's queued and finished records", || async {
        let infos = client.tasks_info(&keys).await.unwrap();
        infos
            .iter()
            .all(|i| i.queued_at.is_some() && i.finished_at.is_some())
    })
    .await;
    // One record per batch message and writer: 4 queued, 4 ended; none per call.
    assert_eq!(record_fields(&env, "queued").await, 4);
    assert_eq!(record_fields(&env, "states").await, 4);

    let infos = client.tasks_info(&keys).await.unwrap();
    let by = infos[0].queued_by.clone();
    assert!(by.is_some());
    for (info, key) in infos.iter().zip(&keys) {
        assert_eq!(&info.key, key);
        assert_eq!(info.state, TaskState::Succeeded, "{info:?}");
        assert_eq!(info.function.as_deref(), Some("inc"));
        assert_eq!(info.queued_by, by);
        assert!(info.worker.is_some() && info.slot.is_some(), "{info:?}");
        assert_eq!(info.attempt, Some(0));
        let (queued, started) = (info.queued_at.unwrap(), info.started_at.unwrap());
        let finished = info.finished_at.unwrap();
        assert!(queued <= started && started <= finished, "{info:?}");
        assert_eq!(info.duration_ms, Some(finished - started));
    }
    let info = client.task_info(failing[1].key()).await.unwrap();
    assert_eq!(info.state, TaskState::Failed);
    assert_eq!(info.error.as_deref(), Some("second 2"));

    // The stream: each call's own events, as if recorded alone.
    env.eventually("every call's events in the stream", || async {
        let events = client.events(None, None, 10_000).await.unwrap();
        events.len() >= 2 * 252
    })
    .await;
    let events = client.events(None, None, 10_000).await.unwrap();
    let mut kinds: HashMap<&TaskKey, Vec<EventKind>> = HashMap::new();
    for event in &events {
        kinds.entry(&event.key).or_default().push(event.kind);
    }
    for key in &keys {
        let mut of_key = kinds.get(key).cloned().unwrap_or_default();
        of_key.sort_by_key(|k| k.as_str());
        assert_eq!(of_key, [EventKind::Queued, EventKind::Succeeded], "{key}");
    }
    let failed = events
        .iter()
        .find(|e| e.key == *failing[0].key() && e.kind == EventKind::Failed)
        .expect("the failed call's event");
    assert_eq!(failed.error.as_deref(), Some("first 1"));
    assert!(failed.worker.is_some() && failed.started.is_some());
    // `rask events --function` filters the calls too.
    let out = env
        .rask(&["events", "--json", "--function", "fail"], "")
        .await;
    assert!(out.status.success(), "{out:?}");
    let listed: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 4, "2 queued, 2 failed: {listed:?}");
    assert!(listed.iter().all(|e| e["function"] == "fail"));

    // A long batch shows its calls running (the worker's `started` record of the batch), then
    // cancelled.
    let long = client
        .map_with(
            sleep_ms,
            [(60_000,), (60_000,)],
            &TaskOptions::new().batch(2),
        )
        .await
        .unwrap();
    env.eventually(
        "both calls of the long batch to show as running",
        || async {
            let keys = [long[0].key().clone(), long[1].key().clone()];
            let infos = client.tasks_info(&keys).await.unwrap();
            infos.iter().all(|i| i.state == TaskState::Running)
        },
    )
    .await;
    let info = client.task_info(long[1].key()).await.unwrap();
    assert!(
        info.worker.is_some() && info.started_at.is_some(),
        "{info:?}"
    );
    client.cancel(&long).force().await.unwrap();
    for future in &long {
        assert!(future.result_within(PATIENCE).await.is_err());
        let info = client.task_info(future.key()).await.unwrap();
        assert_eq!(info.state, TaskState::Cancelled);
    }
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_event_stream_is_bounded() {
    let mut env = TestEnv::new("events-bound").await;
    env.settings.events = true;
    env.settings.events_max_len = 10;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    // A client writes its queued events at the end of each publishing call: an entry each.
    let mut futures = Vec::new();
    for i in 0..300 {
        futures.push(client.submit(inc, (i,)).await.unwrap());
    }
    client.gather(&futures).timeout(PATIENCE).await.unwrap();
    // An entry per batch of events; Redis trims whole nodes of 100 entries (`MAXLEN ~`).
    env.eventually("the stream to be trimmed", || async {
        let (length, added) = stream_lengths(&env).await;
        added > length + 100
    })
    .await;
    let (length, _) = stream_lengths(&env).await;
    assert!((10..=110).contains(&length), "{length} entries kept");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn events_off_records_nothing() {
    let mut env = TestEnv::new("events-off").await;
    env.settings.events = false;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let future = client.submit(inc, (1,)).await.unwrap();
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), 2);
    // The state still comes from the result; nothing else is known.
    let info = client.task_info(future.key()).await.unwrap();
    assert_eq!(info.state, TaskState::Succeeded);
    assert!(info.queued_at.is_none() && info.started_at.is_none());
    assert_eq!(stream_lengths(&env).await, (0, 0));
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_report_around_a_block_is_one_self_contained_page() {
    let mut env = TestEnv::new("report").await;
    env.settings.events = true;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let out = env.path("report.html");
    let futures = client
        .report(&out, async {
            let futures = client.map(inc, (0..30).map(|i| (i,))).await.unwrap();
            client.gather(&futures).timeout(PATIENCE).await.unwrap();
            let failed = client
                .submit(fail, ("report <failure> 9".into(),))
                .await
                .unwrap();
            assert!(failed.result_within(PATIENCE).await.is_err());
            futures
        })
        .await
        .unwrap();
    assert_eq!(futures.len(), 30);
    let page = std::fs::read_to_string(&out).unwrap();
    assert!(page.contains(r#"<b id="tasks">31</b>"#), "{page}");
    assert!(page.contains(r#"<b id="failed">1</b>"#), "{page}");
    assert_eq!(page.matches(r#"class="run""#).count(), 31);
    assert!(page.contains(r#"data-function="inc""#) && page.contains(r#"data-function="fail""#));
    assert!(
        page.contains("report &lt;failure&gt; 9"),
        "the failure, escaped"
    );
    assert!(page.contains(r#"id="utilization""#) && page.contains(r#"id="throughput""#));
    // Self-contained: nothing to fetch.
    for fetch in ["src=", "href=", "<link", "<script", "url("] {
        assert!(!page.contains(fetch), "{fetch} in the page");
    }

    // The CLI writes the same kind of page for the last minutes.
    let cli_out = env.path("cli-report.html");
    let done = env
        .rask(
            &[
                "report",
                "--since",
                "10m",
                "--out",
                cli_out.to_str().unwrap(),
            ],
            "",
        )
        .await;
    assert!(done.status.success(), "{done:?}");
    let page = std::fs::read_to_string(&cli_out).unwrap();
    assert!(page.contains(r#"<b id="tasks">31</b>"#), "{page}");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_dead_lettered_task_shows_when_and_why() {
    let mut env = TestEnv::new("events-dead").await;
    env.settings.events = true;
    // The worker takes smaller messages than the client sends.
    let sends = env.settings.max_message_bytes;
    env.settings.max_message_bytes = 1000;
    let worker = env.run_worker(Registry::with_builtins());
    env.settings.max_message_bytes = sends;
    let client = env.client().await;
    let big = client
        .submit(rask::builtins::echo, (rmpv::Value::from("x".repeat(4000)),))
        .await
        .unwrap();
    assert!(big.result_within(PATIENCE).await.is_err());
    let info = client.task_info(big.key()).await.unwrap();
    assert_eq!(info.state, TaskState::Failed);
    assert!(info.dead_lettered_at.is_some(), "{info:?}");
    let events = client.events(None, None, 100).await.unwrap();
    let dead = events
        .iter()
        .find(|e| e.key == *big.key() && e.kind == EventKind::DeadLettered)
        .expect("a dead_lettered event");
    assert!(
        dead.error.as_deref().unwrap_or("").contains("1000"),
        "{dead:?}"
    );
    worker.stop().await.unwrap();
}
