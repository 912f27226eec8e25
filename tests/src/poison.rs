//! The poison-message scenario shared by the classic-queue (Redis-counted) and quorum-queue
//! (`x-delivery-count`) tests: a task that kills every worker process running it.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use rask::builtins::inc;
use rask::{FailureKind, TaskKey};
use rask_common::TaskMessage;

use crate::tasks::abort_worker;
use crate::{dead_letter_reason, failure, Counter, TestEnv, PATIENCE};

/// With `max_deliveries = 3`: submits an [`abort_worker`] task and an `inc`, starts worker
/// processes of `program` (the `rask-test-worker` binary) one at a time and checks that the
/// first three die of the poison (it ran exactly three times), that the fourth fails its future
/// with `DeliveryLimit`, dead-letters it with the reason and serves the `inc`, and keeps running.
/// Returns the poison's key.
pub async fn dead_lettered_after_three_deliveries(env: &TestEnv, program: &Path) -> TaskKey {
    // One task at a time and no other held, so that the poison dies alone each time.
    let settings = [
        ("RASK_MAX_DELIVERIES", "3"),
        ("RASK_CONCURRENCY", "1"),
        ("RASK_PREFETCH", "1"),
    ];
    let client = env.client().await;
    let runs = Counter::new(env, "poison");
    let poison = client
        .submit(abort_worker, (runs.url.clone(), runs.key.clone()))
        .await
        .unwrap();
    let normal = client.submit(inc, (41,)).await.unwrap();

    for death in 1..=3 {
        let mut worker = env.spawn_program_with(program, 1, &settings).remove(0);
        let status = worker
            .wait(PATIENCE)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("worker {death} dies running the poison"));
        assert_eq!(status.signal(), Some(nix::libc::SIGABRT), "worker {death}");
        assert_eq!(runs.runs().await, death);
    }

    // The next worker refuses it instead of dying, and serves the task behind it.
    let mut survivor = env.spawn_program_with(program, 1, &settings).remove(0);
    let f = failure(poison.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::DeliveryLimit);
    let reason = "delivered 3 times without an outcome (max_deliveries = 3)";
    assert!(f.message.contains(reason), "{}", f.message);
    assert_eq!(normal.result_within(PATIENCE).await.unwrap(), 42);
    assert_eq!(runs.runs().await, 3, "the poison ran no more");
    assert!(survivor.is_running().unwrap());

    let dead = env.dead_letters(1).await;
    let copy = TaskMessage::decode(&dead[0].data).unwrap();
    assert_eq!(&copy.key, poison.key());
    let why = dead_letter_reason(&dead[0]).unwrap();
    assert!(why.contains(reason), "{why}");
    client.close().await.unwrap();
    poison.key().clone()
}
