//! Learning of stored results without polling: one Redis subscription per client to the
//! deployment's done channel and to the client's own reply channel, fanned out to every waiter
//! in the process.
//!
//! Announcements carry keys only; a waiter reads the outcomes itself in batches (MGET). Replies
//! ([`rask_common::reply`], for the tasks this client `call`s) carry the stored outcome, which a
//! waiter takes as it is, reading nothing. A waiter subscribes before its first read, and whenever announcements may have been missed (the
//! subscription was re-established, or the waiter fell behind) it re-reads every key still
//! pending. So a lost announcement can delay a result, never lose it. For the same reason
//! announcements that arrive while no waiter listens are not decoded at all.
//!
//! A subscription only receives, so a connection whose peer vanished without a FIN or RST (a
//! partition, a Redis restarted behind one) would never fail by itself: the listener pings it
//! every `redis_ping_interval` and replaces it when a ping goes unanswered, and waiters
//! re-read everything pending every few intervals in any case.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashTable;
use rask_common::keys::Keys;
use rask_common::pinged::{self, Lost};
use rask_common::reply::ReplyTo;
use rask_common::{Outcome, Store, TaskKey};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::references::Keeper;

/// What the listener tells waiters.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// These keys have stored outcomes.
    Done(Arc<Vec<String>>),
    /// This key's stored outcome, sent to this client.
    Reply(Arc<Replied>),
    /// Announcements may have been missed: re-read everything pending.
    Resync,
}

/// A reply: a task's key and its stored outcome.
#[derive(Debug)]
pub(crate) struct Replied {
    key: TaskKey,
    outcome: Arc<Vec<u8>>,
}

/// Announcement batches buffered per waiter before it must resync.
const BUFFER: usize = 4096;
/// First and largest pause between attempts to resubscribe (the largest is at most the ping
/// interval, so that a healed network is noticed within one).
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));
/// Ping intervals between two re-reads of every pending key by every waiter.
const RESCAN_EVERY: u32 = 6;

/// The subscription of one client; stops when dropped.
pub(crate) struct Listener {
    events: broadcast::Sender<Event>,
    task: JoinHandle<()>,
    /// This client's reply channel's id.
    reply_to: ReplyTo,
}

/// The channels a listener subscribes to.
struct Channels {
    /// Announcements of stored keys ([`Keys::done_channel`]).
    done: String,
    /// Replies to this client ([`Keys::reply_channel`]).
    reply: String,
}

impl Listener {
    /// Subscribes to the done channel of `keys` and to a reply channel of its own on the Redis
    /// of the first of `clients` that answers (the nodes of a Redis Cluster, or the one Redis);
    /// returns once subscribed. The subscription is pinged every `ping`; one that fails, or
    /// leaves a ping unanswered for `ping`, is made again on the next client in turn, and every
    /// waiter then re-reads its pending keys (as it also does every [`RESCAN_EVERY`] pings).
    pub(crate) async fn start(
        clients: Vec<redis::Client>,
        keys: &Keys,
        ping: Duration,
    ) -> Result<Self> {
        let reply_to = ReplyTo::unique();
        let channels = Channels {
            done: keys.done_channel(),
            reply: keys.reply_channel(&reply_to),
        };
        let (events, _) = broadcast::channel(BUFFER);
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(listen(clients, channels, ping, events.clone(), ready_tx));
        match ready_rx.await {
            Ok(Ok(())) => Ok(Listener {
                events,
                task,
                reply_to,
            }),
            Ok(Err(e)) => Err(Error::Store(e)),
            Err(_) => Err(Error::ListenerStopped),
        }
    }

    /// The id of this client's reply channel, for the messages of tasks it waits for.
    pub(crate) fn reply_to(&self) -> &ReplyTo {
        &self.reply_to
    }

    /// A new receiver of every event from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

impl Listener {
    /// Stops listening; waiters then fail with [`Error::ListenerStopped`].
    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen(
    clients: Vec<redis::Client>,
    channels: Channels,
    ping: Duration,
    events: broadcast::Sender<Event>,
    ready: oneshot::Sender<redis::RedisResult<()>>,
) {
    let mut ready = Some(ready);
    let most_pause = BACKOFF.1.min(ping);
    let mut pause = BACKOFF.0.min(most_pause);
    let mut turn = 0;
    loop {
        let client = &clients[turn % clients.len()];
        turn += 1;
        let pubsub = match subscribe(client, &channels, ping).await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                if turn < clients.len() {
                    tracing::debug!(error = %e, "subscribing on the next node");
                    continue;
                }
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(e));
                    return;
                }
                tracing::warn!(error = %e, retry_in = ?pause, "resubscribing to completions failed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(most_pause);
                continue;
            }
        };
        pause = BACKOFF.0.min(most_pause);
        match ready.take() {
            Some(ready) => {
                let _ = ready.send(Ok(()));
            }
            None => {
                tracing::info!("resubscribed to completions; waiters re-read pending keys");
                let _ = events.send(Event::Resync);
            }
        }
        let lost = relay(pubsub, &channels.reply, ping, &events).await;
        tracing::warn!(error = %lost, "completion subscription lost; resubscribing");
    }
}

/// A subscription to `channels` through `client`, made within `deadline`.
async fn subscribe(
    client: &redis::Client,
    channels: &Channels,
    deadline: Duration,
) -> redis::RedisResult<redis::aio::PubSub> {
    let subscribed = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&channels.done).await?;
        pubsub.subscribe(&channels.reply).await?;
        Ok(pubsub)
    };
    tokio::time::timeout(deadline, subscribed)
        .await
        .unwrap_or_else(|_| Err(timed_out("subscribing", deadline)))
}

/// Passes announcements and replies (those on channel `reply`) of `pubsub` on to waiters, pings
/// it every `ping`, and asks waiters to re-read every [`RESCAN_EVERY`] pings
/// ([`pinged::relay`]); returns why the subscription is lost: it failed, or a ping went
/// unanswered for `ping`.
async fn relay(
    pubsub: redis::aio::PubSub,
    reply: &str,
    ping: Duration,
    events: &broadcast::Sender<Event>,
) -> redis::RedisError {
    let (mut sink, mut messages) = pubsub.split();
    let announced = |message: &redis::Msg| {
        if events.receiver_count() == 0 {
            // No waiter: nothing to decode for (a `map` of a million tasks is announced while
            // it is still publishing, before its `gather` waits); a waiter reads everything
            // pending when it starts.
            return;
        }
        let payload = message.get_payload_bytes();
        if message.get_channel_name() == reply {
            pass_reply(payload, events);
        } else {
            announce(payload, events);
        }
    };
    let resync = || {
        let _ = events.send(Event::Resync);
        std::future::ready(Ok::<(), std::convert::Infallible>(()))
    };
    let lost = pinged::relay(
        &mut sink,
        &mut messages,
        ping,
        RESCAN_EVERY,
        announced,
        resync,
    );
    match lost.await {
        Lost::Failed(e) => e,
        Lost::Unanswered(ping) => timed_out("PING", ping),
        Lost::Closed => {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
        }
        Lost::Rescan(never) => match never {},
    }
}

/// Passes the keys announced in `payload` on to waiters.
fn announce(payload: &[u8], events: &broadcast::Sender<Event>) {
    match rmp_serde::from_slice::<Vec<String>>(payload) {
        Ok(keys) => {
            let _ = events.send(Event::Done(Arc::new(keys)));
        }
        Err(e) => tracing::warn!(error = %e, "ignoring a malformed completion announcement"),
    }
}

/// Passes the outcome replied in `payload` on to waiters.
fn pass_reply(payload: &[u8], events: &broadcast::Sender<Event>) {
    match rask_common::reply::decode(payload) {
        Some((key, outcome)) => {
            let outcome = Arc::new(outcome.to_vec());
            let _ = events.send(Event::Reply(Arc::new(Replied { key, outcome })));
        }
        None => tracing::warn!("ignoring a malformed reply"),
    }
}

/// The error of a step that took longer than `deadline`.
fn timed_out(what: &str, deadline: Duration) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} took over {deadline:?}: the connection is taken for dead"),
    ))
}

/// Keys read per `MGET` round of a re-read of everything pending: a re-read of a million keys
/// goes in rounds, whose outcomes are handed out before the next round is read, so that the
/// client never holds a million outcomes (or their keys' names) at once.
const RESCAN_CHUNK: usize = 10_000;

/// Waits for the outcomes of a set of keys, yielding each (by its index) as it is stored.
///
/// Memory per key: the key itself (`keys`) and one index in `pending`, a table of indices found
/// by their key's hash: no key is held twice (a map of a million tasks gathers in a bounded
/// client). `K` is an owned [`TaskKey`], or a borrowed one where the caller holds the keys for
/// as long as it waits (`gather`): then the waiter copies none of them (a million keys are a
/// million allocations and some 70 MiB).
pub(crate) struct Waiter<K = TaskKey> {
    store: Store,
    /// Reads results kept in the blob store (`blob_url`).
    keeper: Keeper,
    events: broadcast::Receiver<Event>,
    keys: Vec<K>,
    /// Indices of `keys` still without an outcome, hashed by their key with `hasher` (a key
    /// given more than once is there once per index).
    pending: HashTable<usize>,
    hasher: RandomState,
    ready: VecDeque<(usize, Arc<Vec<u8>>)>,
    /// A re-read of everything pending under way: the next index of `keys` to read.
    rescan: Option<usize>,
}

impl<K: Borrow<TaskKey>> Waiter<K> {
    /// A waiter for `keys`; `events` must be subscribed before the first read (it is: the
    /// first call of [`Waiter::next`] reads everything).
    pub(crate) fn new(
        store: Store,
        keeper: Keeper,
        events: broadcast::Receiver<Event>,
        keys: Vec<K>,
    ) -> Self {
        let hasher = RandomState::new();
        let mut pending = HashTable::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let hash = hasher.hash_one(key.borrow().as_str());
            pending.insert_unique(hash, i, |&j: &usize| {
                hasher.hash_one(keys[j].borrow().as_str())
            });
        }
        Waiter {
            store,
            keeper,
            events,
            keys,
            pending,
            hasher,
            ready: VecDeque::new(),
            rescan: Some(0),
        }
    }

    /// A waiter for keys that cannot have outcomes yet (fresh unique keys not yet published):
    /// it skips the first read and only listens.
    pub(crate) fn for_unpublished(mut self) -> Self {
        self.rescan = None;
        self
    }

    /// Indices of the keys still without an outcome.
    pub(crate) fn pending_indices(&self) -> Vec<usize> {
        self.pending.iter().copied().collect()
    }

    /// The key at `index`.
    pub(crate) fn key(&self, index: usize) -> &TaskKey {
        self.keys[index].borrow()
    }

    /// A pending index whose key is `key`, if any.
    fn find(&self, key: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        self.pending
            .find(hash, |&i| self.keys[i].borrow().as_str() == key)
            .copied()
    }

    /// Whether `index` is still pending.
    fn is_pending(&self, index: usize) -> bool {
        let hash = self.hasher.hash_one(self.keys[index].borrow().as_str());
        self.pending.find(hash, |&i| i == index).is_some()
    }

    /// The next stored outcome as (index, outcome), or `None` when all are done. An outcome
    /// that does not decode is that index's error; an `Err` outside means nothing more can be
    /// learnt for now ([`Error::Store`]: try again; [`Error::ListenerStopped`]: give up).
    pub(crate) async fn next(&mut self) -> Option<Result<(usize, Result<Outcome>)>> {
        loop {
            if let Some((index, bytes)) = self.ready.pop_front() {
                let outcome = match Outcome::decode(&bytes).map_err(Error::from) {
                    // A result kept in the blob store: read from there (a `GET` per result,
                    // of results over `blob_threshold` only).
                    Ok(Outcome::Value(value)) if self.keeper.blobs().is_some() => self
                        .keeper
                        .resolve_result(self.keys[index].borrow(), value)
                        .await
                        .map(Outcome::Value),
                    other => other,
                };
                return Some(Ok((index, outcome)));
            }
            if self.pending.is_empty() {
                return None;
            }
            if let Some(from) = self.rescan {
                // One round of the re-read; its outcomes are handed out before the next.
                let to = (from + RESCAN_CHUNK).min(self.keys.len());
                let round: Vec<usize> = (from..to).filter(|&i| self.is_pending(i)).collect();
                if let Err(e) = self.fetch(&round).await {
                    return Some(Err(e));
                }
                self.rescan = (to < self.keys.len()).then_some(to);
                continue;
            }
            let mut announced: Vec<usize> = Vec::new();
            let mut replied = false;
            let mut first = Some(self.events.recv().await);
            loop {
                let event = match first.take() {
                    Some(event) => event,
                    None => match self.events.try_recv() {
                        Err(broadcast::error::TryRecvError::Empty) => break,
                        Err(broadcast::error::TryRecvError::Closed) => {
                            Err(broadcast::error::RecvError::Closed)
                        }
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            Err(broadcast::error::RecvError::Lagged(n))
                        }
                        Ok(event) => Ok(event),
                    },
                };
                match event {
                    Ok(Event::Done(keys)) => {
                        announced.extend(keys.iter().filter_map(|k| self.find(k.as_str())));
                    }
                    Ok(Event::Reply(reply)) => {
                        self.found(&reply.key, &reply.outcome);
                        replied = true;
                    }
                    Ok(Event::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.rescan = Some(0);
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Some(Err(Error::ListenerStopped))
                    }
                }
            }
            if replied {
                // Those replied to meanwhile are not read again.
                announced.retain(|&i| self.is_pending(i));
            }
            if !announced.is_empty() && self.rescan.is_none() {
                if let Err(e) = self.fetch(&announced).await {
                    self.rescan = Some(0);
                    return Some(Err(e));
                }
            }
        }
    }

    /// Waits until `pause` has passed or the listener asks for a re-read (it subscribed again,
    /// so Redis answers again), whichever is first, before the next read; announcements
    /// meanwhile are dropped, as the next call of [`Waiter::next`] re-reads everything pending
    /// (it is only called after a failed read). Fails with [`Error::ListenerStopped`] when the
    /// listener stops.
    pub(crate) async fn pause(&mut self, pause: Duration) -> Result<()> {
        let until = tokio::time::Instant::now() + pause;
        loop {
            match tokio::time::timeout_at(until, self.events.recv()).await {
                Err(_) | Ok(Ok(Event::Resync)) => return Ok(()),
                Ok(Ok(Event::Done(_) | Event::Reply(_)))
                | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => return Err(Error::ListenerStopped),
            }
        }
    }

    /// Reads the keys at `indices` and moves those with outcomes (every index of each such
    /// key) from pending to ready.
    async fn fetch(&mut self, indices: &[usize]) -> Result<()> {
        if indices.is_empty() {
            return Ok(());
        }
        let keys: Vec<TaskKey> = indices
            .iter()
            .map(|&i| self.keys[i].borrow().clone())
            .collect();
        let found = self.store.get_outcomes(&keys).await?;
        for (key, bytes) in keys.iter().zip(found) {
            if let Some(bytes) = bytes {
                self.found(key, &Arc::new(bytes));
            }
        }
        Ok(())
    }

    /// Moves every pending index of `key`, whose stored outcome is `bytes`, to ready.
    fn found(&mut self, key: &TaskKey, bytes: &Arc<Vec<u8>>) {
        let hash = self.hasher.hash_one(key.as_str());
        let all = &self.keys;
        while let Ok(entry) = self.pending.find_entry(hash, |&i| all[i].borrow() == key) {
            let (index, _) = entry.remove();
            self.ready.push_back((index, bytes.clone()));
        }
    }
}
