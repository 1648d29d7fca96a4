//! Delayed delivery: a [`Scheduler`] keeps messages that carry a delivery time
//! ([`Message::deliver_at`] / [`Message::deliver_after`]) in a [`DelayStore`] and a relay
//! publishes each when it is due, to any backend.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use millstream::delay::{MemoryDelayStore, Scheduler};
//! use millstream::{Message, MemoryPubSub, Publisher};
//!
//! # async fn f() -> millstream::Result<()> {
//! let pubsub = MemoryPubSub::new();
//! let scheduler = Scheduler::new(MemoryDelayStore::new(), Arc::new(pubsub.clone()));
//! // Published in ten minutes; other messages go straight through.
//! scheduler.publish("reminders", Message::new("pay").deliver_after(Duration::from_secs(600))).await?;
//! scheduler.publish("orders", Message::new("now")).await?;
//! # Ok(()) }
//! ```
//!
//! The [`App`](crate::App) installs one around its pub/sub with
//! [`App::delays`](crate::App::delays): then every publish of the app (a handler's outputs,
//! [`Ctx`](crate::Ctx), the buses) honours a delivery time, a handler may return
//! [`Delayed<T>`](crate::Delayed), and the router hands long retry delays to the store instead of
//! holding the message on the broker (see [`RouterConfig::requeue_after`](crate::RouterConfig::requeue_after)).
//!
//! # Guarantees
//! - **Durable as its store**: [`MemoryDelayStore`] loses its messages with the process; the SQL
//!   backend's [`SqlDelayStore`](crate::pubsub::sql::SqlDelayStore) and Redis's
//!   [`RedisDelayStore`](crate::pubsub::redis::RedisDelayStore) keep them across restarts, and
//!   every process relaying from one store shares the work (each message is taken by one relay
//!   at a time).
//! - **At least once**: a message is taken with a lease ([`Scheduler::lease`], 30 s), published,
//!   then forgotten; a relay that dies in between leaves it to be published again when the lease
//!   ends (with the same message id, so a [`Deduplicator`](crate::middleware::Deduplicator)
//!   drops the copy). A publish that fails leaves the message for the next try at its lease's
//!   end; one its topic refuses for good goes to the [poison topic](Scheduler::poison_topic).
//! - **Order**: due messages are published earliest due first, and in the order they were
//!   scheduled among equal due times; a delayed message is not ordered against messages
//!   published without a delay, and a message whose lease ran out is published after the ones
//!   due before its retry.
//! - **Timing**: a message is published at its due time or after it: at once when scheduled in
//!   this process, within [`Scheduler::poll_interval`] (250 ms) when another process scheduled it.
//!   Due times are read from the scheduling process's clock and compared with the relaying one's:
//!   keep the clocks of processes sharing a store synchronised.

mod memory;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::Notify;

pub use self::memory::MemoryDelayStore;
use crate::error::{ErrorKind, Result};
use crate::keys;
use crate::message::Message;
use crate::op::OpFuture;
use crate::pubsub::Publisher;
pub use crate::store::{DelayStore, DelayedMessage, TakenMessage};

/// Publishes messages when they are due: a [`Publisher`] in front of another one. A message
/// without a delivery time goes straight to the publisher behind it; one with a delivery time
/// ([`Message::deliver_at`]) is kept in the [`DelayStore`] until then, and a relay (a task the
/// scheduler starts on first use, one per scheduler) publishes it. See the [module
/// docs](self) for what is guaranteed.
///
/// Cheap to clone: clones share the store, the publisher and the relay. The relay stops when the
/// scheduler is [closed](Publisher::close) or its last clone is dropped.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn DelayStore>,
    publisher: Arc<dyn Publisher>,
    scope: String,
    /// Where due messages their topic refuses for good go.
    poison_topic: Option<String>,
    poll: Duration,
    lease: Duration,
    batch: usize,
    /// Wakes the relay: a message was scheduled (it may be due before the relay's next look),
    /// or the scheduler was closed. Shared with the relay, which holds no strong reference to
    /// the scheduler while it waits.
    wake: Arc<Notify>,
    started: AtomicBool,
    closed: AtomicBool,
    relay: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Due messages one relay round publishes at most (a full round runs again at once).
const BATCH: usize = 256;

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Scheduler {
    /// A scheduler keeping delayed messages in `store` and publishing through `publisher`.
    pub fn new(store: impl DelayStore, publisher: Arc<dyn Publisher>) -> Self {
        Self::with_store(Arc::new(store), publisher)
    }

    /// [`new`](Self::new) with a store shared with other schedulers (give each its own
    /// [`scope`](Self::scope) when they publish to different backends).
    pub fn with_store(store: Arc<dyn DelayStore>, publisher: Arc<dyn Publisher>) -> Self {
        Scheduler {
            inner: Arc::new(Inner {
                store,
                publisher,
                scope: String::new(),
                poison_topic: Some("millstream.poison".to_owned()),
                poll: Duration::from_millis(250),
                lease: Duration::from_secs(30),
                batch: BATCH,
                wake: Arc::new(Notify::new()),
                started: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                relay: Mutex::new(None),
            }),
        }
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("configure a Scheduler before cloning or using it")
    }

    /// The name under which this scheduler keeps its messages in the store (default: empty).
    /// Schedulers of one store with the same scope relay each other's messages (processes of one
    /// service); give schedulers that publish to different backends different scopes.
    ///
    /// # Panics
    /// After the scheduler was cloned or used.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.inner_mut().scope = scope.into();
        self
    }

    /// Where a due message goes when its topic refuses it for good (an invalid topic name, say),
    /// with the reason in its metadata: default `millstream.poison`, the router's default poison
    /// topic. When there is none, or it refuses the message too (a payload too large for the
    /// broker), the message is parked in the store, never due ([`PARKED`], reason under
    /// [`REFUSED`]). Either way it no longer holds up the messages due after it.
    ///
    /// # Panics
    /// After the scheduler was cloned or used.
    pub fn poison_topic(mut self, topic: Option<String>) -> Self {
        self.inner_mut().poison_topic = topic;
        self
    }

    /// How often the relay looks for messages scheduled by other processes (default 250 ms;
    /// messages scheduled by this one wake it at once).
    ///
    /// # Panics
    /// After the scheduler was cloned or used.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.inner_mut().poll = every.max(Duration::from_millis(1));
        self
    }

    /// How long a relay holds the messages it took before another may publish them again
    /// (default 30 s): longer than a publish of one round of due messages (256 at most) can take.
    ///
    /// # Panics
    /// After the scheduler was cloned or used.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.inner_mut().lease = lease.max(Duration::from_millis(100));
        self
    }

    /// The publisher due messages go to.
    pub fn publisher(&self) -> &Arc<dyn Publisher> {
        &self.inner.publisher
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn DelayStore> {
        &self.inner.store
    }

    /// Publishes `message` to `topic` at `when` (at once, through the relay, if `when` has
    /// passed).
    pub async fn publish_at(&self, topic: &str, message: Message, when: SystemTime) -> Result<()> {
        self.schedule(topic, vec![message.deliver_at(when)]).await
    }

    /// Publishes `message` to `topic` after `delay`.
    pub async fn publish_after(&self, topic: &str, message: Message, delay: Duration) -> Result<()> {
        self.schedule(topic, vec![message.deliver_after(delay)]).await
    }

    /// How many messages the store holds for this scheduler's scope.
    pub async fn pending(&self) -> Result<u64> {
        self.inner.store.count(&self.inner.scope).await
    }

    /// Keeps messages that carry a delivery time until it comes.
    async fn schedule(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(crate::pubsub::closed_error("scheduler closed"));
        }
        let delayed = messages
            .into_iter()
            .map(|message| DelayedMessage {
                topic: topic.to_owned(),
                due_ms: message.deliver_at_ms().unwrap_or(0),
                message,
            })
            .collect();
        self.inner.store.schedule(&self.inner.scope, delayed).await?;
        self.start();
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Starts the relay (once; later calls do nothing). Publishing a delayed message starts it,
    /// and so does an [`App`](crate::App) when it is built inside a tokio runtime, so that a
    /// restarted process publishes what its predecessor left. Outside a tokio runtime it does nothing (and a later call
    /// starts it).
    pub fn start(&self) {
        if self.inner.started.load(Ordering::Acquire) || self.inner.closed.load(Ordering::Acquire) {
            return;
        }
        let mut relay = self.inner.relay.lock();
        if relay.is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        *relay = Some(runtime.spawn(run_relay(Arc::downgrade(&self.inner), self.inner.wake.clone())));
        self.inner.started.store(true, Ordering::Release);
    }

    /// Publishes every message due now (what the relay does each round); returns how many. Any
    /// process may call it, beside the relays: each message is taken by one of them.
    pub async fn relay_due(&self) -> Result<usize> {
        self.inner.relay_due().await
    }
}

impl Inner {
    async fn relay_due(&self) -> Result<usize> {
        let mut published = 0;
        loop {
            let taken = self.store.take_due(&self.scope, now_ms(), self.batch, self.lease).await?;
            let full = taken.len() >= self.batch;
            published += self.publish_taken(taken).await?;
            // (A closing scheduler stops between rounds: the rest waits for the next process.)
            if !full || self.closed.load(Ordering::Acquire) {
                return Ok(published);
            }
        }
    }

    /// Publishes taken messages in order, a run of one topic's at a time, and forgets the ones
    /// published. On a failed publish the rest stay taken until their lease ends.
    async fn publish_taken(&self, taken: Vec<TakenMessage>) -> Result<usize> {
        let mut done = Vec::with_capacity(taken.len());
        let mut taken = taken.into_iter().peekable();
        let mut failure = None;
        while let Some(first) = taken.next() {
            let topic = first.delayed.topic;
            let mut seqs = vec![first.seq];
            let mut run = vec![undelayed(first.delayed.message)];
            while let Some(next) = taken.next_if(|next| next.delayed.topic == topic) {
                seqs.push(next.seq);
                run.push(undelayed(next.delayed.message));
            }
            let result = if run.len() == 1 {
                self.publisher.publish(&topic, run[0].clone()).await
            } else {
                self.publisher.publish_batch(&topic, run.clone()).await
            };
            match result {
                Ok(()) => done.extend(seqs),
                // Refused for good (too large for the broker, say): published one by one, the
                // refused ones set aside, so that they do not hold up the rest for ever.
                Err(error) if error.is_permanent() => {
                    for (seq, message) in seqs.into_iter().zip(run) {
                        match self.publisher.publish(&topic, message.clone()).await {
                            Ok(()) => done.push(seq),
                            Err(error) if error.is_permanent() => {
                                self.set_aside(&topic, message, &error).await;
                                done.push(seq);
                            }
                            Err(error) => {
                                failure = Some(error);
                                break;
                            }
                        }
                    }
                    if failure.is_some() {
                        break;
                    }
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        if !done.is_empty() {
            self.store.done(&self.scope, &done).await?;
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(done.len()),
        }
    }
}

impl Inner {
    /// A due message its topic refuses for good: to the poison topic with the reason; if there
    /// is none, or it refuses the message too (a payload too large for the broker is too large
    /// for its poison topic as well), **parked** in the store: kept under [`PARKED`], never due,
    /// with the reason in `millstream.scheduler.refused`, for an operator to find. Nothing is lost.
    async fn set_aside(&self, topic: &str, message: Message, error: &crate::error::Error) {
        let id = message.id();
        if let Some(poison) = &self.poison_topic {
            let dead = message
                .clone()
                .with_static_header(keys::poison::REASON, error.to_string())
                .with_static_header(keys::poison::KIND, format!("{:?}", error.kind()))
                .with_static_header(keys::poison::HANDLER, "millstream.scheduler")
                .with_static_header(keys::poison::TOPIC, topic)
                .with_static_header(keys::poison::ATTEMPT, "1")
                .with_static_header(keys::poison::TIME, now_ms().to_string());
            match self.publisher.publish(poison, dead).await {
                Ok(()) => {
                    tracing::error!(%id, topic, %error, poison_topic = %poison, "scheduler: a due message was refused for good; sent to the poison topic");
                    return;
                }
                Err(poison_error) => {
                    tracing::warn!(%id, topic, error = %poison_error, "scheduler: the poison topic refused it too");
                }
            }
        }
        tracing::error!(%id, topic, %error, scope = %self.scope, "scheduler: a due message was refused for good; parked in the delay store");
        let parked = DelayedMessage {
            topic: topic.to_owned(),
            message: message.with_static_header(REFUSED, error.to_string()),
            due_ms: PARKED,
        };
        if let Err(park_error) = self.store.schedule(&self.scope, vec![parked]).await {
            tracing::error!(%id, topic, error = %park_error, "scheduler: parking the refused message failed; it is dropped");
        }
    }
}

/// The due time of a message [parked](Scheduler::poison_topic) in a store: never due.
pub const PARKED: u64 = (i64::MAX / 2) as u64;

/// On a parked message: why its topic refused it.
pub const REFUSED: &str = "millstream.scheduler.refused";

/// The message as published when due: without its delivery time.
fn undelayed(mut message: Message) -> Message {
    message.metadata_mut().remove(keys::DELIVER_AT);
    message
}

/// The relay: publishes due messages, then sleeps until the next is due, the poll interval
/// passes, or it is woken; until the scheduler is closed or dropped.
async fn run_relay(inner: Weak<Inner>, wake: Arc<Notify>) {
    let mut failures = 0u32;
    loop {
        let Some(scheduler) = inner.upgrade() else { return };
        if scheduler.closed.load(Ordering::Acquire) {
            return;
        }
        let mut wait = scheduler.poll;
        match scheduler.relay_due().await {
            Ok(_) => {
                failures = 0;
                if let Ok(Some(next)) = scheduler.store.next_due(&scheduler.scope).await {
                    wait = wait.min(Duration::from_millis(next.saturating_sub(now_ms())));
                }
            }
            Err(error) if error.kind() == ErrorKind::Closed => return,
            Err(error) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(%error, failures, scope = %scheduler.scope, "scheduler: relaying due messages failed; trying again");
                }
                // Back off up to 32 polls while the store or the broker is away.
                wait = wait.saturating_mul(1 << failures.min(5));
            }
        }
        drop(scheduler);
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

impl Publisher for Scheduler {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        if message.metadata().get(keys::DELIVER_AT).is_none() {
            return self.inner.publisher.publish(topic, message);
        }
        OpFuture::boxed(self.schedule(topic, vec![message]))
    }

    /// Publishes the batch's undelayed messages as one batch, in order, and schedules the
    /// delayed ones.
    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> OpFuture<'a> {
        if messages.iter().all(|m| m.metadata().get(keys::DELIVER_AT).is_none()) {
            return self.inner.publisher.publish_batch(topic, messages);
        }
        OpFuture::boxed(async move {
            let (delayed, now): (Vec<_>, Vec<_>) =
                messages.into_iter().partition(|m| m.metadata().get(keys::DELIVER_AT).is_some());
            if !now.is_empty() {
                self.inner.publisher.publish_batch(topic, now).await?;
            }
            self.schedule(topic, delayed).await
        })
    }

    /// Stops the relay (a round under way finishes first), then closes the publisher behind it.
    /// Messages not yet due stay in the store, for the next process.
    fn close(&self) -> OpFuture<'_> {
        OpFuture::boxed(async move {
            self.inner.closed.store(true, Ordering::Release);
            self.inner.wake.notify_one();
            let relay = self.inner.relay.lock().take();
            if let Some(relay) = relay {
                let _ = relay.await;
            }
            self.inner.publisher.close().await
        })
    }

    fn delays(&self) -> bool {
        true
    }
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("scope", &self.inner.scope)
            .field("poll_interval", &self.inner.poll)
            .field("lease", &self.inner.lease)
            .field("started", &self.inner.started.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
