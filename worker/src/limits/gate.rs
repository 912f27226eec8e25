//! What a task of a function (or a pool) with a global limit passes before it runs, once per
//! limited subject (its pool's limit first, then its function's):
//!
//! - A rate: it takes the subject's next token (one script, [`store::take_token`]) unless it
//!   holds one already (`pool_rate_token`, `rate_token`). A token due now: on to the next check. A token due
//!   later: the task goes back through the delay ladder of its pool for exactly that long,
//!   holding the token (`rate_token`), and its delivery is acknowledged: no worker holds it
//!   meanwhile, and as a new message its return is not a failed delivery (`max_deliveries`).
//! - A concurrency: it takes a lease ([`store::acquire`]), which it holds until its run ends,
//!   renewed every `heartbeat_interval` for 3 intervals; a worker that dies stops renewing, so
//!   its leases expire and their slots are free again. No lease free: the task goes back
//!   through the delay ladder after a pause that doubles with each deferral (50 ms to 1 s,
//!   with jitter), without waiting in the worker: a worker never holds a delivery or a
//!   concurrency slot for a lease.
//!
//! Each return is counted in the message's `deferrals`.

use std::time::Duration;

use lapin::message::Delivery;
use rask_common::limits::{store, Limit};
use rask_common::{Store, TaskMessage};
use tokio_util::task::AbortOnDropHandle;

use crate::error::Error;
use crate::send_back::send_back;
use crate::worker::Shared;

/// First and longest pause before a task that found no lease free is delivered again.
const LEASE_PAUSE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// Heartbeat intervals a lease lives without being renewed.
const LEASE_HEARTBEATS: u32 = 3;

/// What to do with a task of a limited function.
pub(crate) enum Gate {
    /// Run it now, holding this lease (for a concurrency limit) until the run ends; `true`
    /// if it holds a rate token (so that a hand-off for resources does not charge it again).
    Run(Option<Lease>, bool),
    /// Nothing more to do: it was sent back to wait, or the worker stops (Redis refused the
    /// script) and the delivery goes back to the queue when the channel closes.
    Done,
}

/// A concurrency lease held by a run: renewed while held, given back when dropped.
pub(crate) struct Lease {
    store: Store,
    function: String,
    id: String,
    _renewal: AbortOnDropHandle<()>,
}

impl Lease {
    /// Gives the lease back and returns once Redis has it (so that whatever the run does next,
    /// such as storing its outcome, is seen after the lease is free). If Redis fails, the lease
    /// expires by itself.
    pub(crate) async fn give_back(mut self) {
        let (function, id) = self.take();
        give_back_one(&self.store, &function, &id).await;
    }

    /// The lease's function and id, leaving the lease with nothing to give back when dropped.
    fn take(&mut self) -> (String, String) {
        (
            std::mem::take(&mut self.function),
            std::mem::take(&mut self.id),
        )
    }
}

impl Drop for Lease {
    /// A lease dropped without [`Lease::give_back`] (a run torn down on the way) is given back
    /// in the background.
    fn drop(&mut self) {
        let (function, id) = self.take();
        if id.is_empty() {
            return;
        }
        // Without a runtime (the process is ending) the lease expires by itself.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        runtime.spawn(async move { give_back_one(&store, &function, &id).await });
    }
}

/// Gives every lease of `leases` back, returning once Redis has them.
pub(crate) async fn give_back(leases: [Option<Lease>; 2]) {
    for lease in leases.into_iter().flatten() {
        lease.give_back().await;
    }
}

async fn give_back_one(store: &Store, function: &str, id: &str) {
    if let Err(e) = store::release(store, function, id).await {
        tracing::warn!(function, error = %e, "could not give a concurrency lease back; it expires by itself");
    }
}

/// Which limit of a task a gate applies: the subject's name in the limit table and the
/// message's flag for holding a token of its rate.
#[derive(Clone, Copy)]
pub(crate) enum Subject<'a> {
    /// Its pool's (`pool:NAME`).
    Pool(&'a str),
    /// Its function's.
    Function(&'a str),
}

impl Subject<'_> {
    fn name(&self) -> &str {
        match self {
            Subject::Pool(name) | Subject::Function(name) => name,
        }
    }

    fn holds_token(&self, message: &TaskMessage) -> bool {
        match self {
            Subject::Pool(_) => message.pool_rate_token,
            Subject::Function(_) => message.rate_token,
        }
    }

    /// `message`, marked as holding (`true`) a token of this subject's rate.
    fn with_token(&self, message: &TaskMessage, holds: bool) -> TaskMessage {
        let mut message = message.clone();
        match self {
            Subject::Pool(_) => message.pool_rate_token = holds,
            Subject::Function(_) => message.rate_token = holds,
        }
        message
    }
}

/// Admits `message` (delivered as `delivery`) under `limit`, the limit of `subject`, see the
/// module docs.
pub(crate) async fn gate(
    shared: &Shared,
    message: &TaskMessage,
    delivery: &Delivery,
    subject: Subject<'_>,
    limit: &Limit,
) -> Gate {
    let function = subject.name();
    let mut rate_token = subject.holds_token(message);
    if limit.rate.is_some() && !rate_token {
        let taken = crate::retry::until_ok("taking a rate-limit token", || {
            store::take_token(&shared.store, function, limit)
        })
        .await;
        let wait = match taken {
            Ok(wait) => wait,
            Err(source) => return refused(shared, "taking a rate-limit token", source),
        };
        rate_token = true;
        if wait >= Duration::from_millis(1) {
            let holding = subject.with_token(message, rate_token);
            let why = "over its rate limit";
            defer(shared, &holding, delivery, wait, why).await;
            return Gate::Done;
        }
    }
    let Some(concurrency) = limit.concurrency else {
        return Gate::Run(None, rate_token);
    };
    let id = format!("{}:{}", shared.id, uuid::Uuid::new_v4().simple());
    let ttl = shared.settings.heartbeat_interval * LEASE_HEARTBEATS;
    let acquired = crate::retry::until_ok("taking a concurrency lease", || {
        store::acquire(&shared.store, function, concurrency, &id, ttl)
    })
    .await;
    match acquired {
        Ok(true) => Gate::Run(Some(lease(shared, function, id)), rate_token),
        Ok(false) => {
            let next = subject.with_token(message, rate_token);
            let delay = pause(message.deferrals);
            defer(shared, &next, delivery, delay, "no concurrency lease free").await;
            Gate::Done
        }
        Err(source) => refused(shared, "taking a concurrency lease", source),
    }
}

/// Raises the fatal error of Redis refusing `what` (the worker stops).
fn refused(shared: &Shared, what: &'static str, source: rask_common::Error) -> Gate {
    shared.fatal.raise(Error::StoreRefused { what, source });
    Gate::Done
}

/// Lease `id` of `function`, renewed every heartbeat interval until dropped.
fn lease(shared: &Shared, function: &str, id: String) -> Lease {
    let every = shared.settings.heartbeat_interval;
    let ttl = every * LEASE_HEARTBEATS;
    let (store, name, lease) = (shared.store.clone(), function.to_owned(), id.clone());
    let renewal = tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match store::renew(&store, &name, &lease, ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(function = name, "a concurrency lease expired while its task ran (the worker was stalled or cut off from Redis): the limit may be exceeded until it ends");
                    return;
                }
                Err(e) => {
                    tracing::warn!(function = name, error = %e, "renewing a concurrency lease failed; trying again");
                }
            }
        }
    });
    Lease {
        store: shared.store.clone(),
        function: function.to_owned(),
        id,
        _renewal: AbortOnDropHandle::new(renewal),
    }
}

/// The pause before a task deferred `deferrals` times already for want of a lease comes back:
/// 50 ms doubling to 1 s, less up to half of it at random, so that deferred tasks spread out.
fn pause(deferrals: u32) -> Duration {
    let full = LEASE_PAUSE
        .0
        .saturating_mul(1 << deferrals.min(16))
        .min(LEASE_PAUSE.1);
    let (bits, _) = uuid::Uuid::new_v4().as_u64_pair();
    full - full.mul_f64((bits >> 11) as f64 / (1u64 << 53) as f64 / 2.0)
}

/// Republishes `message` (one more deferral, its `rate_token` as given) through the delay ladder of its pool after
/// `delay`, confirmed, then acknowledges `delivery`; requeues it instead if publishing fails.
async fn defer(
    shared: &Shared,
    message: &TaskMessage,
    delivery: &Delivery,
    delay: Duration,
    why: &str,
) {
    let next = TaskMessage {
        deferrals: message.deferrals.saturating_add(1),
        ..message.clone()
    };
    let settings = shared.pools.settings_for(message.pool.as_ref());
    let delay = delay.min(rask_common::delay::MAX_DELAY);
    let what = "send a limited task back to wait";
    if send_back(&shared.confirms, &settings, &next, delay, delivery, what).await {
        tracing::debug!(key = %message.key, task = %message.function, ?delay, deferrals = next.deferrals, "{why}: sent back to wait");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_pauses_grow_to_a_bound_with_jitter() {
        for (deferrals, full) in [(0, 50), (1, 100), (4, 800), (5, 1000), (u32::MAX, 1000)] {
            let full = Duration::from_millis(full);
            for _ in 0..20 {
                let p = pause(deferrals);
                assert!(p <= full && p >= full / 2, "{deferrals}: {p:?}");
            }
        }
    }
}
