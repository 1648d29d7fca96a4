//! [`MemoryPubSub`]: the embedded default backend, in the process, nothing to install.
//!
//! The equivalent of Watermill's GoChannel, with consumer groups:
//! - every consumer group of a topic gets every message, and each subscription without a group is
//!   a group of its own; within a group each message goes to one subscription;
//! - a nacked message goes back to the front of its group's queue and is delivered again (to any
//!   subscription of the group), with its attempt count raised; a delivery dropped unsettled is nacked;
//! - each group's queue is bounded ([`MemoryConfig::capacity`], default 1024): a publisher waits
//!   while any group of the topic is full (and goes on once that queue is down to half), so memory
//!   stays bounded however slow a consumer is (redelivered messages go back in regardless, since
//!   they were already counted once);
//! - messages published to a topic nobody subscribes to are dropped, unless retained history is on
//!   ([`MemoryConfig::retain`]): then the last N messages of each topic are replayed to every new
//!   group or subscription;
//! - a named group's queue outlives its subscriptions: what was queued or nacked waits for the next
//!   subscription of the group. Nothing survives the process (`features().persistent == false`).
//!
//! Messages live in memory anyway, so there are no read batches to bound: a subscription takes
//! its queue's messages one at a time, and a payload is shared (not copied) by every group that
//! queues it. What the backend holds is bounded by [`MemoryConfig::capacity`] messages per group
//! (and [`MemoryConfig::retain`] per topic); [`MemoryConfig::max_payload`] bounds their size.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_core::Stream;
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;

use super::{
    check_size, closed_error, AckSink, Acker, Attempts, Delivery, Features, OpFuture, Publisher, Settle,
    Settlement, SubscribeOptions, Subscriber, Subscription, Token,
};
use crate::error::Result;
use crate::message::Message;

/// Settings of a [`MemoryPubSub`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Messages each consumer group may hold before publishers wait. Default 1024.
    pub capacity: usize,
    /// How many of each topic's latest messages to replay to a new subscription. Default 0 (off).
    pub retain: usize,
    /// The largest payload a publish accepts, in bytes ([`Features::max_payload`]); a larger one
    /// is refused with a permanent [`ErrorKind::Config`](crate::error::ErrorKind::Config) error.
    /// Default `None` (no limit).
    pub max_payload: Option<usize>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { capacity: 1024, retain: 0, max_payload: None }
    }
}

/// The in-process pub/sub. Cheap to clone: clones share the same topics.
///
/// ```
/// # use millstream::{MemoryPubSub, Message, Publisher, Subscriber, SubscribeOptions};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
/// let pubsub = MemoryPubSub::new();
/// let mut orders = pubsub.subscribe("orders", SubscribeOptions::group("billing")).await?;
/// pubsub.publish("orders", Message::new(r#"{"id":1}"#)).await?;
/// let delivery = orders.next().await.expect("one delivery")?;
/// assert_eq!(&delivery.message().payload()[..], br#"{"id":1}"#);
/// delivery.ack().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryPubSub {
    shared: Arc<Shared>,
}

struct Shared {
    config: MemoryConfig,
    topics: RwLock<HashMap<Box<str>, Arc<Topic>, TopicHasher>>,
    closed: AtomicBool,
    next_waiter: AtomicU64,
}

struct Topic {
    inner: Mutex<TopicInner>,
}

/// Hashes topic names for the topic map, which every publish looks up.
///
/// The standard SipHash took about 300 instructions per publish for a short name, most of the
/// publish fast path; this multiply-rotate hash (the one rustc uses, keyed per map with a random
/// seed) takes a few dozen. Topic names are chosen by the application, and there are few.
#[derive(Clone)]
struct TopicHasher {
    seed: u64,
}

impl TopicHasher {
    fn new() -> Self {
        use std::hash::{BuildHasher as _, Hasher as _};
        TopicHasher { seed: std::collections::hash_map::RandomState::new().build_hasher().finish() }
    }
}

impl std::hash::BuildHasher for TopicHasher {
    type Hasher = FxHasher;

    fn build_hasher(&self) -> FxHasher {
        FxHasher(self.seed)
    }
}

struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Default)]
struct TopicInner {
    groups: Vec<Arc<Queue>>,
    history: VecDeque<Message>,
}

/// A consumer group's queue, in two halves on cache lines of their own: publishers push to the
/// inbox, subscriptions take from the outbox, and a subscription that finds the outbox empty
/// swaps the whole inbox into it under both locks (an O(1) exchange of the two buffers).
///
/// With one lock for both ends, the publisher's core and the consumer's took the same cache line
/// in turn for every message. Now a consumer that lags takes everything waiting with one visit
/// to the publishers' side, and reads it from then on without them; one that keeps up visits it
/// once per message, as before. Nothing is held back from the group: the outbox is the group's,
/// so any of its subscriptions takes from it, in order.
///
/// The bound is kept with credits: `Inbox::room` is what publishers may still push, taken one
/// per message. A subscription counts what it takes (`Outbox::freed`) on its own side, and
/// gives it back at a swap when no publisher waits, when it finds the queue empty, and when
/// half a queue has been taken; a publisher out of room takes it back itself. So publishers
/// wait while `capacity` messages are queued, and are woken once the queue is down to half.
struct Queue {
    me: Weak<Queue>,
    group: Option<Box<str>>,
    /// Taken messages to give back at once, [`capacity`](MemoryConfig::capacity) minus the low
    /// water: waiting publishers are woken when the queue is down to half.
    give_back: isize,
    inbox: Padded<Mutex<Inbox>>,
    outbox: Padded<Mutex<Outbox>>,
}

/// A value on cache lines of its own (two 64-byte lines, as adjacent lines are fetched in pairs).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

struct Entry {
    message: Message,
    attempt: u32,
}

/// The publishers' half of a [`Queue`].
#[derive(Default)]
struct Inbox {
    items: VecDeque<Entry>,
    /// How many more messages publishers may push; may go below 0 where redelivered messages
    /// came back (they are queued regardless).
    room: isize,
    /// Subscriptions waiting for a message.
    consumers: Vec<(u64, Waker)>,
    /// Publishers waiting for room.
    producers: Vec<(u64, Waker)>,
    closed: bool,
}

/// The subscriptions' half of a [`Queue`].
#[derive(Default)]
struct Outbox {
    /// Older than everything in the inbox; a redelivered message goes to its front.
    items: VecDeque<Entry>,
    /// Messages taken (less those that came back) whose room is not yet given back to the inbox.
    freed: isize,
    subscribers: usize,
    closed: bool,
}

/// What a subscription found in its queue.
enum Taken {
    /// A message, and the waiting publishers to wake if it gave room back.
    Entry(Entry, SmallVec<[Waker; 2]>),
    Empty,
    Closed,
}

impl Inbox {
    /// Gives `freed` room back; the waiting publishers, if there is room now.
    fn give_back(&mut self, freed: isize) -> SmallVec<[Waker; 2]> {
        self.room += freed;
        if self.room > 0 && !self.producers.is_empty() {
            self.producers.drain(..).map(|(_, w)| w).collect()
        } else {
            SmallVec::new()
        }
    }
}

impl Queue {
    fn new(group: Option<Box<str>>, capacity: usize, history: &VecDeque<Message>) -> Arc<Self> {
        let items: VecDeque<Entry> =
            history.iter().map(|m| Entry { message: m.clone(), attempt: 1 }).collect();
        let capacity = isize::try_from(capacity).unwrap_or(isize::MAX);
        let low_water = capacity / 2;
        let room = capacity - isize::try_from(items.len()).unwrap_or(isize::MAX);
        Arc::new_cyclic(|me| Queue {
            me: me.clone(),
            group,
            give_back: capacity - low_water,
            inbox: Padded(Mutex::new(Inbox { room, ..Inbox::default() })),
            outbox: Padded(Mutex::new(Outbox { items, ..Outbox::default() })),
        })
    }

    /// Pushes if there is room. On `Err` the message is handed back and, when `waiter` is given,
    /// the waiter is registered to be woken once there is room.
    fn try_push(&self, message: Message, waiter: Option<(u64, &Waker)>) -> Result<(), Message> {
        let mut inbox = self.inbox.lock();
        if inbox.room <= 0 && !inbox.closed {
            // Out of room: take back what the subscriptions took and have not given back yet
            // (the locks are taken outbox first, so the inbox's is let go meanwhile). Publishers
            // wait only while `capacity` messages are queued.
            drop(inbox);
            let freed = std::mem::take(&mut self.outbox.lock().freed);
            inbox = self.inbox.lock();
            inbox.room += freed;
        }
        if inbox.closed {
            return Ok(()); // the group is gone: nothing will read it, drop like a topic without subscribers
        }
        if inbox.room <= 0 {
            if let Some((id, waker)) = waiter {
                register(&mut inbox.producers, id, waker);
            }
            return Err(message);
        }
        inbox.room -= 1;
        inbox.items.push_back(Entry { message, attempt: 1 });
        let consumer = inbox.consumers.pop();
        drop(inbox);
        if let Some((_, waker)) = consumer {
            waker.wake();
        }
        Ok(())
    }

    /// Takes the oldest message for subscription `id`, or registers it to be woken for the next.
    fn take(&self, id: u64, waker: &Waker) -> Taken {
        let mut outbox = self.outbox.lock();
        if outbox.closed {
            return Taken::Closed;
        }
        let mut sharing: SmallVec<[Waker; 2]> = SmallVec::new();
        let entry = match outbox.items.pop_front() {
            Some(entry) => entry,
            None => {
                let mut inbox = self.inbox.lock();
                if inbox.items.is_empty() {
                    register(&mut inbox.consumers, id, waker);
                    // The queue is empty: all that was taken is room again.
                    let freed = std::mem::take(&mut outbox.freed);
                    let producers = inbox.give_back(freed);
                    drop(inbox);
                    drop(outbox);
                    producers.into_iter().for_each(Waker::wake);
                    return Taken::Empty;
                }
                std::mem::swap(&mut inbox.items, &mut outbox.items);
                // Other subscriptions of the group that wait share what was just taken over.
                let others = inbox.consumers.len().min(outbox.items.len() - 1);
                sharing.extend(inbox.consumers.drain(..others).map(|(_, w)| w));
                if inbox.producers.is_empty() {
                    // Nobody waits for room: settle the count while the lock is held anyway.
                    inbox.room += std::mem::take(&mut outbox.freed);
                }
                drop(inbox);
                outbox.items.pop_front().expect("swapped in a non-empty inbox")
            }
        };
        outbox.freed += 1;
        let freed = if outbox.freed >= self.give_back { std::mem::take(&mut outbox.freed) } else { 0 };
        drop(outbox);
        sharing.into_iter().for_each(Waker::wake);
        let producers = if freed > 0 { self.inbox.lock().give_back(freed) } else { SmallVec::new() };
        Taken::Entry(entry, producers)
    }

    /// Puts a message taken before back at the front, as attempt `attempt`.
    fn requeue(&self, message: Message, attempt: u32) {
        let mut outbox = self.outbox.lock();
        if outbox.closed {
            return;
        }
        outbox.items.push_front(Entry { message, attempt });
        outbox.freed -= 1; // it counts again
        drop(outbox);
        let consumer = self.inbox.lock().consumers.pop();
        if let Some((_, waker)) = consumer {
            waker.wake();
        }
    }

    /// Messages queued, in both halves.
    fn len(&self) -> usize {
        self.outbox.lock().items.len() + self.inbox.lock().items.len()
    }

    fn close(&self) {
        let mut outbox = self.outbox.lock();
        outbox.closed = true;
        outbox.items.clear();
        let mut guard = self.inbox.lock();
        let inbox = &mut *guard;
        inbox.closed = true;
        inbox.items.clear();
        let wakers: Vec<_> =
            inbox.consumers.drain(..).chain(inbox.producers.drain(..)).map(|(_, w)| w).collect();
        drop(guard);
        drop(outbox);
        wakers.into_iter().for_each(Waker::wake);
    }
}

fn register(waiters: &mut Vec<(u64, Waker)>, id: u64, waker: &Waker) {
    match waiters.iter_mut().find(|(i, _)| *i == id) {
        Some(slot) => slot.1.clone_from(waker),
        None => waiters.push((id, waker.clone())),
    }
}

/// The delivery token carries the attempt number, so that a nack can raise it. A rejected message
/// is dropped (no dead letter of its own: the router poisons it first); a released one goes back
/// to the front of the queue with its attempt unchanged.
impl AckSink for Queue {
    fn settle(&self, token: Token, message: Option<Message>, how: Settle) -> OpFuture<'static> {
        let delivered = u32::try_from(token.get()).unwrap_or(u32::MAX);
        match (how, message) {
            (Settle::Nack(delay), Some(message)) => self.nack(message, delivered.saturating_add(1), delay),
            (Settle::Release, Some(message)) => self.requeue(message, delivered),
            _ => {}
        }
        OpFuture::ready(Ok(()))
    }
}

/// What a subscription's deliveries settle through: its queue, behind an allocation of its own.
///
/// Every delivery holds a reference to it, taken and dropped by the consumer; were it the queue's
/// own reference count, that count would share a cache line with the queue's lock, which the
/// publishers take on other cores for every message.
struct Settler(Arc<Queue>);

impl AckSink for Settler {
    fn settle(&self, token: Token, message: Option<Message>, how: Settle) -> OpFuture<'static> {
        self.0.settle(token, message, how)
    }
}

impl Queue {
    /// Puts a nacked message back, as attempt `attempt`, after `delay` if any.
    fn nack(&self, message: Message, attempt: u32, delay: Option<Duration>) {
        match (delay, tokio::runtime::Handle::try_current()) {
            (Some(delay), Ok(handle)) if !delay.is_zero() => {
                // Keep the queue alive until the delay is over; requeue then.
                // A weak handle: a queue dropped meanwhile has nobody left to deliver to.
                let queue = self.me.clone();
                handle.spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(queue) = queue.upgrade() {
                        queue.requeue(message, attempt);
                    }
                });
            }
            _ => self.requeue(message, attempt),
        }
    }
}

impl MemoryPubSub {
    /// A pub/sub with the default [`MemoryConfig`].
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// A pub/sub with the given settings.
    ///
    /// # Panics
    /// If `config.capacity` is 0.
    pub fn with_config(config: MemoryConfig) -> Self {
        assert!(config.capacity > 0, "MemoryConfig::capacity must be at least 1");
        MemoryPubSub {
            shared: Arc::new(Shared {
                config,
                topics: RwLock::new(HashMap::with_hasher(TopicHasher::new())),
                closed: AtomicBool::new(false),
                next_waiter: AtomicU64::new(1),
            }),
        }
    }

    /// Sets the queue capacity per consumer group (builder style, before first use).
    pub fn capacity(self, capacity: usize) -> Self {
        Self::with_config(MemoryConfig { capacity, ..self.shared.config.clone() })
    }

    /// Replays the last `count` messages of each topic to new subscriptions (builder style).
    pub fn retain(self, count: usize) -> Self {
        Self::with_config(MemoryConfig { retain: count, ..self.shared.config.clone() })
    }

    /// Refuses payloads larger than `bytes` (builder style); see [`MemoryConfig::max_payload`].
    pub fn max_payload(self, bytes: usize) -> Self {
        Self::with_config(MemoryConfig { max_payload: Some(bytes), ..self.shared.config.clone() })
    }

    /// The settings.
    pub fn config(&self) -> &MemoryConfig {
        &self.shared.config
    }

    /// How many messages wait in `topic`'s queues (all groups, not counting those in flight).
    pub fn queued(&self, topic: &str) -> usize {
        let Some(topic) = self.shared.topics.read().get(topic).cloned() else { return 0 };
        let inner = topic.inner.lock();
        inner.groups.iter().map(|q| q.len()).sum()
    }

    fn topic(&self, name: &str) -> Arc<Topic> {
        if let Some(topic) = self.shared.topics.read().get(name) {
            return topic.clone();
        }
        self.create_topic(name)
    }

    /// The topic `name`, made if it is not there yet (another thread may have made it since it
    /// was looked up).
    fn create_topic(&self, name: &str) -> Arc<Topic> {
        self.shared
            .topics
            .write()
            .entry(name.into())
            .or_insert_with(|| Arc::new(Topic { inner: Mutex::new(TopicInner::default()) }))
            .clone()
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl Default for MemoryPubSub {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPubSub")
            .field("config", &self.shared.config)
            .field("topics", &self.shared.topics.read().len())
            .finish()
    }
}

impl Publisher for MemoryPubSub {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        if self.is_closed() {
            return OpFuture::ready(Err(closed_error("memory pub/sub is closed")));
        }
        if let Some(limit) = self.shared.config.max_payload {
            if let Err(error) =
                check_size("payload", message.payload().len(), limit, "MemoryConfig::max_payload")
            {
                return OpFuture::ready(Err(error));
            }
        }
        // The topic is used under the map's read lock, not cloned out of it: an `Arc` clone and
        // drop per publish were two more atomic operations.
        let topics = self.shared.topics.read();
        if let Some(found) = topics.get(topic) {
            return self.publish_to(found, message);
        }
        drop(topics);
        let created = self.create_topic(topic);
        self.publish_to(&created, message)
    }

    fn close(&self) -> OpFuture<'_> {
        self.shared.closed.store(true, Ordering::Release);
        let topics: Vec<_> = self.shared.topics.read().values().cloned().collect();
        for topic in topics {
            let groups = std::mem::take(&mut topic.inner.lock().groups);
            groups.iter().for_each(|q| q.close());
        }
        OpFuture::ready(Ok(()))
    }
}

impl MemoryPubSub {
    /// Publishes to every group of `topic`: at once where each has room, else by a future that
    /// waits for room, group after group.
    fn publish_to(&self, topic: &Topic, message: Message) -> OpFuture<'static> {
        let mut inner = topic.inner.lock();
        let retain = self.shared.config.retain;
        if retain > 0 {
            if inner.history.len() == retain {
                inner.history.pop_front();
            }
            inner.history.push_back(message.clone());
        }
        // Fast path: every group has room. Otherwise wait for the rest, in order.
        let count = inner.groups.len();
        let mut message = Some(message);
        let mut blocked: SmallVec<[(Arc<Queue>, Message); 2]> = SmallVec::new();
        for (index, queue) in inner.groups.iter().enumerate() {
            // The last group takes the message itself, the others a (cheap) clone.
            let copy = if index + 1 == count {
                message.take().expect("taken once")
            } else {
                message.as_ref().expect("not yet taken").clone()
            };
            if !blocked.is_empty() {
                blocked.push((queue.clone(), copy));
            } else if let Err(copy) = queue.try_push(copy, None) {
                blocked.push((queue.clone(), copy));
            }
        }
        drop(inner);
        if blocked.is_empty() {
            return OpFuture::ready(Ok(()));
        }
        let shared = self.shared.clone();
        OpFuture::boxed(async move {
            let id = shared.next_waiter.fetch_add(1, Ordering::Relaxed);
            for (queue, message) in blocked {
                let mut pending = Some(message);
                std::future::poll_fn(|cx| {
                    if shared.closed.load(Ordering::Acquire) {
                        return Poll::Ready(Err(closed_error("memory pub/sub is closed")));
                    }
                    let message = pending.take().expect("polled after completion");
                    match queue.try_push(message, Some((id, cx.waker()))) {
                        Ok(()) => Poll::Ready(Ok(())),
                        Err(message) => {
                            pending = Some(message);
                            Poll::Pending
                        }
                    }
                })
                .await?;
                queue.inbox.lock().producers.retain(|(i, _)| *i != id);
            }
            Ok(())
        })
    }
}

impl Subscriber for MemoryPubSub {
    fn subscribe<'a>(&'a self, topic_name: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription> {
        if self.is_closed() {
            return OpFuture::ready(Err(closed_error("memory pub/sub is closed")));
        }
        let topic = self.topic(topic_name);
        let capacity = self.shared.config.capacity;
        let queue = {
            let mut inner = topic.inner.lock();
            let existing = options
                .group
                .as_deref()
                .and_then(|g| inner.groups.iter().find(|q| q.group.as_deref() == Some(g)).cloned());
            match existing {
                Some(queue) => queue,
                None => {
                    let queue =
                        Queue::new(options.group.as_deref().map(Into::into), capacity, &inner.history);
                    inner.groups.push(queue.clone());
                    queue
                }
            }
        };
        queue.outbox.lock().subscribers += 1;
        let stream = MemoryStream {
            id: self.shared.next_waiter.fetch_add(1, Ordering::Relaxed),
            yield_next: false,
            sink: Arc::new(Settler(queue.clone())),
            queue,
            topic,
        };
        OpFuture::ready(Ok(Subscription::new(stream)))
    }

    fn close(&self) -> OpFuture<'_> {
        Publisher::close(self)
    }

    /// Forgets the topic: its queues and retained history (subscriptions still open keep reading
    /// what they hold).
    fn delete_topic<'a>(&'a self, topic: &'a str) -> OpFuture<'a> {
        self.shared.topics.write().remove(topic);
        OpFuture::ready(Ok(()))
    }

    fn features(&self) -> Features {
        Features {
            backend: "memory",
            consumer_groups: true,
            persistent: false,
            ordered: true,
            history: self.shared.config.retain > 0,
            redelivery: true,
            ordered_single_subscriber: true,
            strict_order: false,
            exactly_once: true,
            nack_delay: true,
            max_payload: self.shared.config.max_payload,
            settlement: Settlement::Individual,
            ordered_per_key: false,
            attempts: Attempts::Exact,
            dead_letter: false,
            release_uncounted: true,
            refuses_unroutable: false,
        }
    }
}

struct MemoryStream {
    id: u64,
    /// This stream just woke waiting publishers: give them the thread once before going on.
    yield_next: bool,
    queue: Arc<Queue>,
    sink: Arc<dyn AckSink>,
    topic: Arc<Topic>,
}

impl Stream for MemoryStream {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.yield_next {
            // The publishers woken last time wait in this worker's LIFO slot (tokio runs a task
            // woken from a worker there next, where no other worker may take it). Yielding once
            // lets them run now while an idle worker takes this consumer over: both then work
            // at once. It happens once per half a queue of messages, when publishers wait.
            this.yield_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // Take part in tokio's cooperative budget, like its own channels: a consumer that always
        // finds a message waiting yields every so often, which lets the publishers it woke run
        // (possibly on another worker) instead of waiting in this worker's LIFO slot until the
        // queue is empty, and then ping-ponging with the consumer one message at a time.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        match this.queue.take(this.id, cx.waker()) {
            Taken::Entry(Entry { message, attempt }, producers) => {
                coop.made_progress();
                // Waiting publishers are woken once the queue has drained to half its capacity,
                // not on every take: a full queue would otherwise cost a task wake-up (often a
                // thread unpark) per message, and the publishers then refill it in one go.
                this.yield_next = !producers.is_empty();
                producers.into_iter().for_each(Waker::wake);
                let acker =
                    Acker::new(this.sink.clone(), Token::new(u64::from(attempt)), Some(message.clone()));
                Poll::Ready(Some(Ok(Delivery::new(message, attempt, acker))))
            }
            Taken::Empty => Poll::Pending,
            Taken::Closed => Poll::Ready(None),
        }
    }
}

impl Drop for MemoryStream {
    fn drop(&mut self) {
        let mut outbox = self.queue.outbox.lock();
        outbox.subscribers -= 1;
        let last = outbox.subscribers == 0;
        let mut inbox = self.queue.inbox.lock();
        inbox.consumers.retain(|(id, _)| *id != self.id);
        // Another subscription of the group may be waiting while this one held the wake-up.
        let waiting = !outbox.items.is_empty() || !inbox.items.is_empty();
        let next = if waiting { inbox.consumers.pop() } else { None };
        drop(inbox);
        drop(outbox);
        if let Some((_, waker)) = next {
            waker.wake();
        }
        if last && self.queue.group.is_none() {
            // A private queue dies with its only subscription.
            let mut inner = self.topic.inner.lock();
            inner.groups.retain(|q| !Arc::ptr_eq(q, &self.queue));
            drop(inner);
            self.queue.close();
        }
    }
}
