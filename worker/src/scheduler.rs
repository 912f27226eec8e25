//! The worker's part in periodic tasks: every `schedule_check_interval` it reads the schedules
//! and Redis's clock in one round trip, claims the due ticks of each schedule (a
//! compare-and-set on the schedule's last tick, so that of all the workers checking, one
//! publishes a tick), publishes them confirmed, and takes them out of the outbox. A tick whose
//! claimant died before its publish was confirmed stays in the outbox; once its claim is older
//! than the lease, one worker takes it over and publishes it. See docs/protocol.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rask_common::broker::Destination;
use rask_common::schedule::store::{self, Claimed};
use rask_common::schedule::Schedule;
use rask_common::{Settings, Store};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::release::{self, ConfirmChannel};

/// How long a claimed tick may stay unconfirmed before another worker publishes it: long
/// enough for a publish under load, short enough that a dead claimant delays a tick by little.
const LEASE: Duration = Duration::from_secs(30);
/// Longest wait for one publish's confirmation (the tick stays in the outbox if it passes).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Stale outbox entries taken over per check.
const STALE_PER_CHECK: usize = 100;

/// Checks the schedules until the returned guard is dropped.
pub(crate) fn spawn(settings: Settings, store: Store, confirms: Arc<ConfirmChannel>) -> DropGuard {
    let stop = CancellationToken::new();
    tokio::spawn(run(settings, store, confirms, stop.clone()));
    stop.drop_guard()
}

async fn run(
    settings: Settings,
    store: Store,
    confirms: Arc<ConfirmChannel>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(settings.schedule_check_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match check(&settings, &store, &confirms).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("checking schedules again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "checking schedules failed; retrying every check");
            }
            Err(_) => {}
        }
    }
}

/// One check: publish the due ticks this worker claims, then take over stale claims.
async fn check(
    settings: &Settings,
    store: &Store,
    confirms: &ConfirmChannel,
) -> rask_common::Result<()> {
    let snapshot = store::snapshot(store).await?;
    let now = snapshot.now_ms;
    for (schedule, last) in &snapshot.schedules {
        let (due, latest) = match schedule.due(*last, now, settings.schedule_tolerance()) {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(schedule = schedule.name, error = %e, "skipping a schedule");
                continue;
            }
        };
        let Some(latest) = latest else { continue };
        if !store::claim(store, &schedule.name, *last, latest, &due, now).await? {
            continue;
        }
        for tick in due {
            publish(settings, store, confirms, schedule, tick).await?;
        }
    }
    let lease_ms = u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX);
    let stale = store::stale(store, now.saturating_sub(lease_ms), STALE_PER_CHECK).await?;
    if !stale.is_empty() {
        let by_name: HashMap<&str, &Schedule> = snapshot
            .schedules
            .iter()
            .map(|(s, _)| (s.name.as_str(), s))
            .collect();
        for claimed in stale {
            take_over(
                settings,
                store,
                confirms,
                by_name.get(claimed.name.as_str()).copied(),
                &claimed,
                now,
            )
            .await?;
        }
    }
    Ok(())
}

/// Publishes a stale claim of a tick once this worker has taken it over; drops it if its
/// schedule is gone.
async fn take_over(
    settings: &Settings,
    store: &Store,
    confirms: &ConfirmChannel,
    schedule: Option<&Schedule>,
    claimed: &Claimed,
    now: u64,
) -> rask_common::Result<()> {
    let Some(schedule) = schedule else {
        return store::forget(store, claimed).await;
    };
    if store::reclaim(store, claimed, now).await? {
        tracing::info!(
            schedule = schedule.name,
            tick_ms = claimed.tick_ms,
            "publishing a tick whose claimant did not confirm it"
        );
        publish(settings, store, confirms, schedule, claimed.tick_ms).await?;
    }
    Ok(())
}

/// Publishes the tick at `tick` (confirmed) and takes it out of the outbox. A failed publish
/// is logged and left in the outbox, for a later take-over.
async fn publish(
    settings: &Settings,
    store: &Store,
    confirms: &ConfirmChannel,
    schedule: &Schedule,
    tick: u64,
) -> rask_common::Result<()> {
    let message = schedule.tick_message(tick);
    // To the queues of the task's pool.
    let destination = match &message.pool {
        Some(pool) => Destination::tasks(&settings.for_pool(pool)),
        None => Destination::tasks(settings),
    };
    let sent = tokio::time::timeout(PUBLISH_TIMEOUT, async {
        let channel = confirms.get().await?;
        release::publish(&channel, &destination, &message).await
    })
    .await;
    match sent {
        Ok(Ok(())) => {
            tracing::debug!(schedule = schedule.name, key = %message.key, "published a tick");
            store::published(store, &schedule.name, tick).await
        }
        Ok(Err(e)) if e.is_permanent() => {
            tracing::error!(schedule = schedule.name, tick_ms = tick, error = %e, "the broker refuses this schedule's task for good: dropping the tick");
            store::published(store, &schedule.name, tick).await
        }
        Ok(Err(e)) => {
            tracing::warn!(schedule = schedule.name, tick_ms = tick, error = %e, "publishing a tick failed; it stays claimed and is published again after the lease");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(schedule = schedule.name, tick_ms = tick, "publishing a tick timed out; it stays claimed and is published again after the lease");
            Ok(())
        }
    }
}
