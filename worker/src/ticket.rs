//! What settles a finished task: its own delivery, or, for a graph task this worker runs as
//! the continuation of outcomes it stored (`continuation.rs`), a [`Hold`] on the deliveries
//! of those outcomes.
//!
//! A continued task has no delivery of its own: if the worker dies while it runs, nothing in
//! the broker says that it was ready. So the deliveries whose stored outcomes released it stay
//! unacknowledged until it is settled (its outcome stored and its own dependents published or
//! continued in turn): a [`Carrier`] keeps them and is shared by the tasks it carries, each
//! through a [`Hold`]. When the last hold is settled, the carrier acknowledges its deliveries;
//! if any hold is dropped without being settled (requeued, abandoned, a panic), it requeues
//! them instead. A redelivered delivery finds its outcome stored and releases its dependents
//! again (releasing is idempotent), which publishes the continued task: nothing is lost, at the
//! price of running it again (results are write-once).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};

/// What acknowledges (or requeues) a finished task.
// Not boxed: every delivered task has one, and a box would cost each an allocation; the
// delivery was held by value before tickets existed.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Ticket {
    /// The task's own delivery.
    Delivery(Delivery),
    /// The deliveries that released the task, held until it settles.
    Carried(Hold),
}

impl Ticket {
    /// Settles it: acknowledged (the task is done), or requeued (`requeue`: it will run again).
    pub(crate) async fn settle(self, requeue: bool) {
        match self {
            Ticket::Delivery(delivery) => settle_delivery(&delivery, requeue).await,
            Ticket::Carried(hold) if requeue => drop(hold),
            Ticket::Carried(hold) => hold.settle(),
        }
    }

    /// Acknowledges it.
    pub(crate) async fn ack(self) {
        self.settle(false).await;
    }

    /// Requeues it.
    pub(crate) async fn requeue(self) {
        self.settle(true).await;
    }

    /// Whether the tasks it releases may continue here: it comes from first deliveries only
    /// (none went back to the queue before), so that a redelivery publishes them instead (a
    /// task that keeps failing its continuation then goes through the broker's delivery limit
    /// like any other), and it carries fewer than [`MAX_DEPTH`] continued tasks in a row.
    pub(crate) fn carries_on(&self) -> bool {
        match self {
            Ticket::Delivery(delivery) => !delivery.redelivered,
            Ticket::Carried(hold) => hold.carries_on(),
        }
    }

    /// How many continued tasks in a row it ends (0 for a delivery).
    fn depth(&self) -> usize {
        match self {
            Ticket::Delivery(_) => 0,
            Ticket::Carried(hold) => hold.carrier.as_ref().map_or(0, |c| c.depth),
        }
    }

    /// Its own delivery, if it has one.
    pub(crate) fn delivery(&self) -> Option<&Delivery> {
        match self {
            Ticket::Delivery(delivery) => Some(delivery),
            Ticket::Carried(_) => None,
        }
    }
}

/// Acknowledges or requeues `delivery`; a failure (the channel is gone) means the broker
/// redelivers it anyway.
async fn settle_delivery(delivery: &Delivery, requeue: bool) {
    let settled = if requeue {
        delivery.reject(BasicRejectOptions { requeue: true }).await
    } else {
        delivery.ack(BasicAckOptions::default()).await
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, "could not settle a delivery; it will be redelivered");
    }
}

/// Most continued tasks in a row (each released by the one before): a chain then goes through
/// the broker once, which acknowledges the deliveries held so far. It bounds how long a
/// delivery stays unacknowledged, and how deep carriers nest (settling one settles the one it
/// carries, recursively).
pub(crate) const MAX_DEPTH: usize = 32;

/// The tickets of the outcomes that released continued tasks, settled once every task they
/// carry is settled: acknowledged if each was, requeued if any was not.
pub(crate) struct Carrier {
    tickets: Vec<Ticket>,
    /// Whether its tickets carry on (all first deliveries, at most `MAX_DEPTH` deep).
    first: bool,
    /// 1 + the deepest of its tickets.
    depth: usize,
    failed: AtomicBool,
}

impl Carrier {
    /// A carrier of `tickets`, shared by the holds made from it.
    pub(crate) fn new(tickets: Vec<Ticket>) -> Arc<Self> {
        let first = tickets.iter().all(Ticket::carries_on);
        let depth = 1 + tickets.iter().map(Ticket::depth).max().unwrap_or(0);
        Arc::new(Carrier {
            tickets,
            first,
            depth,
            failed: AtomicBool::new(false),
        })
    }

    /// A hold for one task it carries.
    pub(crate) fn hold(self: &Arc<Self>) -> Hold {
        Hold {
            carrier: Some(self.clone()),
        }
    }
}

impl Drop for Carrier {
    fn drop(&mut self) {
        let requeue = self.failed.load(Ordering::SeqCst);
        let mut deliveries = Vec::new();
        for ticket in std::mem::take(&mut self.tickets) {
            match ticket {
                Ticket::Delivery(delivery) => deliveries.push(delivery),
                Ticket::Carried(hold) if requeue => drop(hold),
                Ticket::Carried(hold) => hold.settle(),
            }
        }
        if deliveries.is_empty() {
            return;
        }
        // Without a runtime (the process is ending) the deliveries go back to the queue when
        // their channel closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let settles = deliveries.iter().map(|d| settle_delivery(d, requeue));
                futures::future::join_all(settles).await;
            });
        }
    }
}

/// One continued task's share of a [`Carrier`]: [`Hold::settle`] it once the task is done;
/// dropping it unsettled makes the carrier requeue its deliveries.
pub(crate) struct Hold {
    carrier: Option<Arc<Carrier>>,
}

impl Hold {
    /// The task is done (its outcome stored and its dependents published or carried on).
    pub(crate) fn settle(mut self) {
        self.carrier.take();
    }

    /// Whether the carrier's deliveries are all first deliveries, and it is not too deep.
    fn carries_on(&self) -> bool {
        self.carrier
            .as_ref()
            .is_some_and(|c| c.first && c.depth < MAX_DEPTH)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(carrier) = self.carrier.take() {
            carrier.failed.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A carrier of carriers: settles (without deliveries) report through the innermost.
    fn nested() -> (Arc<Carrier>, Arc<Carrier>) {
        let outer = Carrier::new(Vec::new());
        let inner = Carrier::new(vec![Ticket::Carried(outer.hold())]);
        (outer, inner)
    }

    #[test]
    fn chains_of_carriers_stop_carrying_on_at_max_depth() {
        let mut carrier = Carrier::new(Vec::new());
        let mut depth = 1;
        while Ticket::Carried(carrier.hold()).carries_on() {
            carrier = Carrier::new(vec![Ticket::Carried(carrier.hold())]);
            depth += 1;
        }
        assert_eq!(depth, MAX_DEPTH);
    }

    #[test]
    fn settled_holds_leave_the_carrier_unfailed() {
        let carrier = Carrier::new(Vec::new());
        let (a, b) = (carrier.hold(), carrier.hold());
        a.settle();
        b.settle();
        assert!(!carrier.failed.load(Ordering::SeqCst));
    }

    #[test]
    fn a_hold_dropped_unsettled_fails_its_carrier_and_those_it_carries() {
        let (outer, inner) = nested();
        let hold = inner.hold();
        drop(inner);
        assert!(!outer.failed.load(Ordering::SeqCst), "still held");
        drop(hold);
        assert!(outer.failed.load(Ordering::SeqCst));
    }

    #[test]
    fn a_carrier_settled_settles_the_hold_it_carries() {
        let (outer, inner) = nested();
        inner.hold().settle();
        drop(inner);
        assert!(!outer.failed.load(Ordering::SeqCst));
        assert_eq!(Arc::strong_count(&outer), 1, "the inner hold is released");
    }
}
