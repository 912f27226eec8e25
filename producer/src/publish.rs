//! Publishing task messages: pipelined on one confirm-mode channel, with a window of unconfirmed
//! publishes, so submitting many tasks costs no round trip per task; and riding out a lost
//! broker by publishing again, on a new connection, every message not yet confirmed.
//!
//! lapin resolves a publish once its frames are written to the socket and its confirm once the
//! broker acknowledges it; keeping a whole window of both in flight lets many publishes share
//! each socket write and each confirm (RabbitMQ confirms in batches with `multiple`).
//!
//! Delivery is at least once: when the connection drops, a message the broker took but whose
//! confirm was lost with the connection is published again, and may run twice. Results are
//! stored write-once (`SET NX`), so the second run cannot change the stored outcome; only a
//! task with side effects of its own would see it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use lapin::{Channel, Confirmation};
use rask_common::broker::{self, Destination};
use rask_common::{Pool, Settings, TaskKey, TaskMessage};
use tokio::time::Instant;

use crate::connection::{is_lost, BrokerLink, Live};
use crate::error::{Error, Result};
use crate::references::Keeper;

/// Most bytes of task messages kept unconfirmed at once, whatever the window: bounds the
/// client's memory when tasks carry large arguments.
const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// Publishes `messages` in order, to run after `delay`, keeping at most
/// `settings.publish_window` unconfirmed, and returns once every one is confirmed by the broker
/// (persistent, routed). Messages are taken from the iterator only as the window allows, so
/// memory stays bounded however many there are. Arguments too long to travel inline go to
/// `keeper` first and travel by reference ([`Keeper::take_args`]).
///
/// # Errors
/// As [`Publisher::next`].
pub(crate) async fn publish_all(
    link: &BrokerLink,
    keeper: &Keeper,
    settings: &Settings,
    delay: Duration,
    messages: impl IntoIterator<Item = Result<TaskMessage>>,
) -> Result<()> {
    let mut publisher = Publisher::new(link, keeper, settings, delay, messages);
    while let Some(confirmed) = publisher.next().await {
        confirmed?;
    }
    Ok(())
}

/// A message taken from the iterator and not yet confirmed.
struct Pending {
    /// Its position in the iterator.
    index: usize,
    message: TaskMessage,
    body: Vec<u8>,
    /// Arguments passed by reference (`message.args_ref`), stored before each publish of it.
    offload: Option<Bytes>,
}

impl Pending {
    /// The bytes it holds in memory until confirmed.
    fn bytes(&self) -> usize {
        self.body.len() + self.offload.as_ref().map_or(0, |a| a.len())
    }
}

/// How one publish ended.
enum Attempt {
    /// The broker confirmed it: (index, key, body bytes).
    Confirmed(usize, TaskKey, usize),
    /// The connection or channel was lost before the confirm: publish it again.
    Lost(Pending, Error),
    /// The broker refused it (a negative confirm): publish it again after a pause. A quorum
    /// queue refuses publishes while it has no leader (a node of the cluster was lost).
    Nacked(Pending),
    /// The broker refused it.
    Failed(Error),
}

/// Publishes an iterator of messages through a window, yielding each as it is confirmed.
pub(crate) struct Publisher<'a, I> {
    link: &'a BrokerLink,
    keeper: &'a Keeper,
    settings: &'a Settings,
    delay: Duration,
    source: std::iter::Fuse<I>,
    pulled: usize,
    /// The channel publishes go to; `None` before the first publish.
    target: Option<Live>,
    /// The destination of each pool published to on `target` (`None`: the default pool).
    destinations: Vec<(Option<Pool>, Arc<Destination>)>,
    in_flight: FuturesOrdered<BoxFuture<'static, Attempt>>,
    in_flight_bytes: usize,
    /// Messages whose publish was lost, in input order, to publish before taking more.
    again: VecDeque<Pending>,
    /// Whether the channel was lost: publishes in flight are ending, then it is replaced.
    lost: bool,
    /// When the broker was first lost (or first refused a publish) since the last confirm:
    /// reconnecting and republishing give up `reconnect_max_wait` after it, however many
    /// reconnects succeeded but lost it again.
    outage: Option<Instant>,
    /// Whether the broker refused a publish: publishes in flight are ending, then the refused
    /// ones are published again, on a new channel, after [`Publisher::pause`] (`lost` is set
    /// too).
    nacked: bool,
    /// The pause before publishing refused messages again (doubling while refusals go on).
    pause: Duration,
    finished: bool,
}

impl<'a, I: Iterator<Item = Result<TaskMessage>>> Publisher<'a, I> {
    /// A publisher of `messages` (nothing is taken from them before [`Publisher::next`]).
    pub(crate) fn new(
        link: &'a BrokerLink,
        keeper: &'a Keeper,
        settings: &'a Settings,
        delay: Duration,
        messages: impl IntoIterator<IntoIter = I>,
    ) -> Self {
        Publisher {
            link,
            keeper,
            settings,
            delay,
            source: messages.into_iter().fuse(),
            pulled: 0,
            target: None,
            destinations: Vec::new(),
            in_flight: FuturesOrdered::new(),
            in_flight_bytes: 0,
            again: VecDeque::new(),
            lost: false,
            outage: None,
            nacked: false,
            pause: NACK_PAUSE.0,
            finished: false,
        }
    }

    /// The next message the broker confirmed, as (its index in the iterator, its key); `None`
    /// once every message is confirmed, or after an error. Confirms come in input order,
    /// except that messages published again after a reconnect come after those confirmed
    /// before it. Takes messages from the iterator only while fewer than `publish_window` are
    /// unconfirmed (so taken − confirmed never exceeds the window), and while fewer than
    /// 64 MiB of them are.
    ///
    /// When the connection or channel is lost, lets every publish in flight end, reconnects
    /// ([`BrokerLink::replace`]) and publishes every message not confirmed again, before taking
    /// more.
    ///
    /// # Errors
    /// An error from the iterator; [`Error::TooLarge`] for a message over `max_message_bytes`
    /// (before publishing it); [`Error::Nacked`] (refused for `reconnect_max_wait`),
    /// [`Error::Unroutable`] or [`Error::Broker`]
    /// for the first message refused; [`Error::Reconnect`] if the broker stays unreachable.
    /// Messages published before the error may be queued and run.
    pub(crate) async fn next(&mut self) -> Option<Result<(usize, TaskKey)>> {
        if self.finished {
            return None;
        }
        let next = self.advance().await;
        if !matches!(next, Some(Ok(_))) {
            self.finished = true;
        }
        next
    }

    async fn advance(&mut self) -> Option<Result<(usize, TaskKey)>> {
        loop {
            if !self.lost {
                if let Err(e) = self.fill().await {
                    return Some(Err(e));
                }
            }
            match self.in_flight.next().await {
                Some(Attempt::Confirmed(index, key, bytes)) => {
                    self.in_flight_bytes -= bytes;
                    self.outage = None;
                    self.pause = NACK_PAUSE.0;
                    return Some(Ok((index, key)));
                }
                Some(Attempt::Lost(pending, error)) => {
                    self.in_flight_bytes -= pending.bytes();
                    if !self.lost {
                        tracing::warn!(error = %error, "lost the broker while publishing; reconnecting");
                        self.lost = true;
                        self.outage.get_or_insert_with(Instant::now);
                    }
                    self.again.push_back(pending);
                }
                Some(Attempt::Nacked(pending)) => {
                    self.in_flight_bytes -= pending.bytes();
                    let since = *self.outage.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.settings.reconnect_max_wait {
                        return Some(Err(Error::Nacked(pending.message.key)));
                    }
                    if !self.nacked {
                        tracing::warn!(key = %pending.message.key, retry_in = ?self.pause, "the broker refused a task; publishing it again on a new channel");
                        // A channel's client state of a quorum queue may keep pointing at a
                        // lost leader: the refused messages go out again on a new channel.
                        self.nacked = true;
                        self.lost = true;
                    }
                    self.again.push_back(pending);
                }
                Some(Attempt::Failed(error)) => return Some(Err(error)),
                None => {
                    if std::mem::take(&mut self.nacked) {
                        tokio::time::sleep(self.pause).await;
                        self.pause = (self.pause * 2).min(NACK_PAUSE.1);
                    }
                    if std::mem::take(&mut self.lost) {
                        let since = self.outage.expect("set when lost");
                        // Every publish of the lost channel has ended: reconnect, then publish
                        // again what was not confirmed.
                        let broken = self.target.take().expect("a publish was attempted");
                        let live = match self.link.replace(&broken, since).await {
                            Ok(live) => live,
                            Err(e) => return Some(Err(e)),
                        };
                        self.aim(live);
                        tracing::warn!(
                            messages = self.again.len(),
                            "publishing again the messages not confirmed before the reconnect"
                        );
                    } else if self.again.is_empty() {
                        return None;
                    }
                }
            }
        }
    }

    /// Publishes messages (again, then new ones) until the window is full or there are none.
    async fn fill(&mut self) -> Result<()> {
        while self.in_flight.len() < self.settings.publish_window
            && self.in_flight_bytes <= MAX_IN_FLIGHT_BYTES
        {
            let pending = match self.again.pop_front() {
                Some(pending) => pending,
                None => match self.source.next() {
                    Some(message) => self.encode(message?)?,
                    None => return Ok(()),
                },
            };
            let channel = match &self.target {
                Some(live) => live.channel.clone(),
                None => {
                    let live = self.link.current()?;
                    let channel = live.channel.clone();
                    self.aim(live);
                    channel
                }
            };
            let to = match self.destination(pending.message.pool.as_ref()) {
                Some(to) => to,
                None => {
                    let pool = pending.message.pool.clone();
                    self.again.push_front(pending);
                    self.add_destination(pool).await?;
                    continue;
                }
            };
            self.in_flight_bytes += pending.bytes();
            self.in_flight
                .push_back(Box::pin(attempt(channel, self.keeper.clone(), to, pending)));
        }
        Ok(())
    }

    /// Publishes on `live` from now on (destinations are made again, as their pools' queues
    /// may have to be declared again on a new connection).
    fn aim(&mut self, live: Live) {
        self.target = Some(live);
        self.destinations.clear();
    }

    /// Where a message of `pool` goes (`None`: the default pool), if known yet. A linear
    /// search: a publisher sees one pool, or a few.
    fn destination(&self, pool: Option<&Pool>) -> Option<Arc<Destination>> {
        self.destinations
            .iter()
            .find(|(p, _)| p.as_ref() == pool)
            .map(|(_, to)| to.clone())
    }

    /// Adds the destination of `pool`'s task queue, through its delay ladder if the tasks wait,
    /// declaring the pool's queues first (once per connection) when it is not the default one.
    ///
    /// # Errors
    /// [`rask_common::Error::DelayTooLong`] for a delay the ladder cannot hold; [`Error`] if the
    /// pool's queues cannot be declared.
    async fn add_destination(&mut self, pool: Option<Pool>) -> Result<()> {
        let to = match &pool {
            None => Destination::after(self.settings, self.delay)?,
            Some(pool) => {
                self.link.declare_pool(pool).await?;
                Destination::after(&self.settings.for_pool(pool), self.delay)?
            }
        };
        self.destinations.push((pool, Arc::new(to)));
        Ok(())
    }

    /// Encodes `message` (the next from the iterator), refusing it if it is too large; its
    /// arguments, when too long to travel inline, are taken out to travel by reference.
    fn encode(&mut self, mut message: TaskMessage) -> Result<Pending> {
        let offload = self.keeper.take_args(&mut message);
        let body = message.encode()?;
        if body.len() > self.settings.max_message_bytes {
            return Err(Error::TooLarge {
                key: message.key,
                bytes: body.len(),
                max: self.settings.max_message_bytes,
            });
        }
        // The body holds the arguments now; only the message's other fields are read again
        // (properties, signature kind, key), so a large argument is not held twice until its
        // confirm.
        message.args = Vec::new();
        let index = self.pulled;
        self.pulled += 1;
        Ok(Pending {
            index,
            message,
            body,
            offload,
        })
    }
}

/// First and largest pause before publishing refused (nacked) messages again.
const NACK_PAUSE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Stores the arguments of `pending` passed by reference, if any, then publishes it on `channel`
/// and waits for the broker's confirm.
async fn attempt(
    channel: Channel,
    keeper: Keeper,
    to: Arc<Destination>,
    pending: Pending,
) -> Attempt {
    if let (Some(args), Some(reference)) = (&pending.offload, &pending.message.args_ref) {
        if let Err(e) = keeper.keep(reference, args.clone()).await {
            return Attempt::Failed(e);
        }
    }
    let published = broker::publish_task(&channel, &to, &pending.message, &pending.body).await;
    let confirmation = match published {
        Ok(confirm) => confirm.await.map_err(Error::from),
        Err(e) => Err(Error::from(e)),
    };
    match confirmation {
        Ok(Confirmation::Nack(_)) => Attempt::Nacked(pending),
        Ok(confirmation) => {
            let bytes = pending.bytes();
            let Pending { index, message, .. } = pending;
            match check(&to, &message.key, confirmation) {
                Ok(()) => Attempt::Confirmed(index, message.key, bytes),
                Err(e) => Attempt::Failed(e),
            }
        }
        Err(e) if is_lost(&e) => Attempt::Lost(pending, e),
        Err(e) => Attempt::Failed(e),
    }
}

fn check(to: &Destination, key: &TaskKey, confirmation: Confirmation) -> Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_returned)) => Err(Error::Unroutable {
            key: key.clone(),
            exchange: to.exchange().to_owned(),
            routing_key: to.routing_key_for(key).to_owned(),
        }),
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(Error::Nacked(key.clone())),
    }
}
