//! Periodic tasks against real servers: each tick of a schedule is published and run exactly
//! once however many workers check it, including when a worker is SIGKILLed and another starts
//! in between; pausing stops the ticks' tasks (the ticks still pass) and resuming brings them
//! back; the CLI adds, lists, pauses, resumes and removes schedules.

use std::path::Path;
use std::time::Duration;

use rask::{Client, ScheduleSpec, TaskKey, Timing};
use rask_tests::tasks::{record_run, recorded_runs};
use rask_tests::TestEnv;

/// Every process here checks the schedules this often, so that ticks are published promptly.
const CHECK: &[(&str, &str)] = &[("RASK_SCHEDULE_CHECK_INTERVAL", "100ms")];

fn test_worker() -> std::path::PathBuf {
    rask::local::sibling_binary("rask-test-worker")
        .expect("rask-test-worker is built (cargo builds it for the tests of rask-tests)")
}

async fn ready(mut workers: Vec<rask::local::Worker>) -> Vec<rask::local::Worker> {
    for worker in &mut workers {
        worker
            .wait_ready(rask_tests::PATIENCE)
            .await
            .expect("worker ready");
    }
    workers
}

/// The schedule `name` as listed, with its interval's anchor (first tick) and period.
async fn anchor_and_period(client: &Client, name: &str) -> (u64, u64) {
    let info = client
        .schedules()
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.schedule.name == name)
        .expect("the schedule is listed");
    match info.schedule.timing {
        Timing::Every {
            every_ms,
            anchor_ms,
        } => (anchor_ms, every_ms),
        other => panic!("an interval, not {other:?}"),
    }
}

/// How many ticks from the first have a stored result, in a row; and whether any of the next
/// `ahead` ticks has one (a tick lost in the middle).
async fn stored_prefix(
    client: &Client,
    name: &str,
    (anchor, every): (u64, u64),
    ahead: u64,
) -> (u64, bool) {
    let key = |k: u64| TaskKey::new(format!("record_run-{name}-{}", anchor + k * every)).unwrap();
    let mut n = 0;
    while client.future::<u64>(key(n)).done().await.unwrap() {
        n += 1;
    }
    let mut beyond = false;
    for k in n + 1..=n + ahead {
        beyond |= client.future::<u64>(key(k)).done().await.unwrap();
    }
    (n, beyond)
}

fn runs(log: &Path) -> u64 {
    u64::from(recorded_runs(log, 1)[0])
}

#[tokio::test]
async fn each_tick_runs_exactly_once_across_three_workers_one_killed_and_one_started() {
    let env = TestEnv::new("sched-once").await;
    let program = test_worker();
    let mut workers = ready(env.spawn_program_with(&program, 3, CHECK)).await;
    let client = env.client().await;
    let log = env.path("runs.log");
    let args = (log.display().to_string(), 0, 0);
    client
        .schedule(
            "tick",
            ScheduleSpec::every(Duration::from_secs(1)),
            record_run,
            args,
        )
        .await
        .unwrap();
    let timing = anchor_and_period(&client, "tick").await;

    env.eventually("8 ticks run", || async {
        stored_prefix(&client, "tick", timing, 0).await.0 >= 8
    })
    .await;
    workers[0].kill().await.unwrap();
    workers.extend(ready(env.spawn_program_with(&program, 1, CHECK)).await);
    env.eventually("20 ticks run", || async {
        stored_prefix(&client, "tick", timing, 0).await.0 >= 20
    })
    .await;

    // No more ticks' tasks: once every claimed tick is published and has run, each ran once.
    assert!(client.pause_schedule("tick").await.unwrap());
    let outbox = format!("{}:schedule-outbox", env.settings.key_prefix);
    env.eventually(
        "every claimed tick published and run, each once",
        || async {
            let unpublished = rask_tests::read_zcard(&env.settings.redis_url, &outbox).await;
            let (ticks, _) = stored_prefix(&client, "tick", timing, 0).await;
            unpublished == 0 && runs(&log) == ticks
        },
    )
    .await;
    let (ticks, beyond) = stored_prefix(&client, "tick", timing, 5).await;
    assert!(
        !beyond,
        "a tick after {ticks} ran while one before it did not"
    );
    assert_eq!(runs(&log), ticks, "one run per tick");
    assert!(ticks >= 20);
}

#[tokio::test]
async fn a_paused_schedule_runs_nothing_until_resumed() {
    let env = TestEnv::new("sched-pause").await;
    let _workers = ready(env.spawn_program_with(&test_worker(), 2, CHECK)).await;
    let client = env.client().await;
    let log = env.path("runs.log");
    let args = (log.display().to_string(), 0, 0);
    let every = ScheduleSpec::every(Duration::from_millis(200));
    client
        .schedule("fast", every, record_run, args)
        .await
        .unwrap();
    let timing = anchor_and_period(&client, "fast").await;
    env.eventually("3 ticks run", || async {
        stored_prefix(&client, "fast", timing, 0).await.0 >= 3
    })
    .await;

    assert!(client.pause_schedule("fast").await.unwrap());
    // Ticks go on being claimed (recorded as skipped) while paused: wait for 5 of them.
    let outbox = format!("{}:schedule-outbox", env.settings.key_prefix);
    env.eventually("claimed ticks published", || async {
        rask_tests::read_zcard(&env.settings.redis_url, &outbox).await == 0
    })
    .await;
    let settled = stored_prefix(&client, "fast", timing, 0).await.0;
    env.eventually("runs settle", || async { runs(&log) == settled })
        .await;
    let last = |c: &Client| {
        let c = c.clone();
        async move {
            c.schedules().await.unwrap()[0]
                .last_tick
                .expect("a tick was claimed")
        }
    };
    let paused_at = last(&client).await;
    env.eventually("5 ticks pass while paused", || async {
        last(&client).await >= paused_at + Duration::from_millis(5 * 200)
    })
    .await;
    assert_eq!(runs(&log), settled, "no tick ran while paused");

    assert!(client.resume_schedule("fast").await.unwrap());
    env.eventually("ticks run again", || async { runs(&log) >= settled + 2 })
        .await;
    assert!(!client.pause_schedule("absent").await.unwrap());
    assert!(client.unschedule("fast").await.unwrap());
    assert!(client.schedules().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_cli_adds_lists_pauses_resumes_and_removes_schedules() {
    let env = TestEnv::new("sched-cli").await;
    let out = env
        .rask(
            &[
                "schedule",
                "add",
                "nightly",
                "--cron",
                "30 2 * * *",
                "--tz",
                "Europe/Paris",
                "--missed",
                "skip",
                "--priority",
                "3",
                "inc",
                "41",
            ],
            "",
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    let out = env
        .rask(
            &[
                "schedule", "add", "often", "--every", "30s", "echo", "\"x\"",
            ],
            "",
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    let bad = env
        .rask(
            &["schedule", "add", "bad", "--cron", "61 * * * *", "inc", "1"],
            "",
        )
        .await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("61 * * * *"),
        "{bad:?}"
    );

    let list = env.rask(&["schedule", "list", "--json"], "").await;
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let nightly = &list[0];
    assert_eq!(nightly["name"], "nightly");
    assert_eq!(nightly["cron"], "30 2 * * *");
    assert_eq!(nightly["tz"], "Europe/Paris");
    assert_eq!(nightly["missed"], "skip");
    assert_eq!(nightly["function"], "inc");
    assert_eq!(nightly["args"], serde_json::json!([41]));
    assert_eq!(nightly["paused"], false);
    assert!(
        nightly["next_tick"].as_str().unwrap().contains("T0"),
        "{nightly}"
    );
    assert_eq!(list[1]["name"], "often");
    assert_eq!(list[1]["every_ms"], 30_000);

    let pause = env.rask(&["schedule", "pause", "nightly"], "").await;
    assert!(pause.status.success());
    let lines = env.rask(&["schedule", "list"], "").await;
    let text = String::from_utf8_lossy(&lines.stdout).to_string();
    let first: Vec<&str> = text.lines().next().unwrap().split('\t').collect();
    assert_eq!(first[0], "nightly");
    assert_eq!(first[1], "cron 30 2 * * * (Europe/Paris)");
    assert_eq!(first[5], "paused");
    assert!(env
        .rask(&["schedule", "resume", "nightly"], "")
        .await
        .status
        .success());
    assert!(env
        .rask(&["schedule", "remove", "nightly"], "")
        .await
        .status
        .success());
    let missing = env.rask(&["schedule", "remove", "nightly"], "").await;
    assert!(!missing.status.success());
    let left = env.rask(&["schedule", "list", "--json"], "").await;
    let left: serde_json::Value = serde_json::from_slice(&left.stdout).unwrap();
    assert_eq!(left.as_array().unwrap().len(), 1);
}
