//! [`TestApp`]: run an app's handlers in a test, on an in-memory backend that records everything.
//!
//! Like FastStream's `TestBroker`: publish a typed value, wait until the handlers have finished
//! with it and with everything it caused, then look at what was published on each topic and what
//! was acked, nacked or sent to the poison topic.
//!
//! ```
//! use millstream::prelude::*;
//! use millstream::testing::TestApp;
//! use millstream::App;
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! #[millstream::topic("doc.orders")]
//! struct Order { id: u64 }
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! #[millstream::topic("doc.invoices")]
//! struct Invoice { order: u64 }
//!
//! #[millstream::handler]
//! async fn bill(order: Order) -> Invoice {
//!     Invoice { order: order.id }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
//! let app = TestApp::start(App::new().handler(bill)).await?;
//! app.publish(&Order { id: 7 }).await?;
//! app.settled().await;
//! assert_eq!(app.published::<Invoice>(), [Invoice { order: 7 }]);
//! assert_eq!(app.acked("doc.orders").len(), 1);
//! app.stop().await
//! # }
//! ```
//!
//! It is always compiled (with the `memory` feature, on by default): it adds no dependency, and
//! code a binary does not call is not linked into it, so tests need no extra feature switched on.
//!
//! Every pub/sub of the app, the default one and each named one, is replaced by one in-memory
//! backend. Two things differ from production, both so that a test cannot hang: a message that
//! fails [`TestConfig::max_attempts`] times is dropped (recorded as [`Outcome::GaveUp`]) instead of
//! redelivered forever, and the router's `nack_delay` is off.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use crate::app::{App, Backend, PublishExt};
use crate::codec::{Codec, JsonCodec};
use crate::error::Result;
use crate::handler::{MessageType, Topic};
use crate::message::Message;
use crate::pubsub::memory::MemoryPubSub;
use crate::pubsub::{
    AckSink, Acker, Delivery, OpFuture, Publisher, Settle, SubscribeOptions, Subscriber, Subscription, Token,
};
use crate::router::Router;

/// Settings of a [`TestApp`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TestConfig {
    /// Deliveries of one message before the test app stops redelivering it. Default 3.
    pub max_attempts: u32,
    /// How long [`TestApp::settled`] waits before failing the test. Default 10 s.
    pub settle_timeout: Duration,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig { max_attempts: 3, settle_timeout: Duration::from_secs(10) }
    }
}

impl TestConfig {
    /// Sets [`max_attempts`](TestConfig::max_attempts) (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets [`settle_timeout`](TestConfig::settle_timeout).
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle_timeout = timeout;
        self
    }
}

/// How a delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Handled: outputs published, then acked.
    Acked,
    /// Failed: nacked and redelivered.
    Nacked,
    /// Failed on its last allowed attempt ([`TestConfig::max_attempts`]): dropped, not redelivered.
    GaveUp,
    /// Rejected: never delivered again (the router rejects what it cannot poison).
    Rejected,
    /// Given back unhandled (a shutdown that aborted it): delivered again, same attempt.
    Released,
}

/// One delivery to one handler and how it ended.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Settlement {
    /// The topic it was read from.
    pub topic: String,
    /// The consumer group (by default the handler's name).
    pub group: Option<String>,
    /// The message.
    pub message: Message,
    /// Which delivery of the message it was (1 the first time).
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
}

/// An app running on a recording in-memory backend, for tests. See the [module docs](self).
pub struct TestApp {
    router: Router,
    recorder: Recorder,
    settle_timeout: Duration,
}

impl TestApp {
    /// Builds `app` on an in-memory backend (whatever pub/subs it was given) and starts it.
    pub async fn start(app: App) -> Result<TestApp> {
        Self::start_with(app, TestConfig::default()).await
    }

    /// [`start`](TestApp::start) with settings.
    pub async fn start_with(mut app: App, config: TestConfig) -> Result<TestApp> {
        let recorder = Recorder::new(config.max_attempts.max(1));
        app.replace_backends(Backend::new(recorder.clone()));
        app.config_mut().nack_delay = None;
        let router = app.start().await?;
        Ok(TestApp { router, recorder, settle_timeout: config.settle_timeout })
    }

    /// The running router (its handlers, its publisher, its health).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Publishes `value` to its type's topic, as JSON.
    pub async fn publish<T: Topic + Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        self.recorder.publish_value(value).await
    }

    /// Publishes `value` to `topic`, as JSON.
    pub async fn publish_to<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<()> {
        self.recorder.publish(topic, Message::new(JsonCodec.encode(value)?)).await
    }

    /// Publishes a ready-made message to `topic`.
    pub async fn publish_message(&self, topic: &str, message: Message) -> Result<()> {
        self.recorder.publish(topic, message).await
    }

    /// Waits until nothing is left to do: no message queued for a handler, none being handled,
    /// none being published.
    ///
    /// # Panics
    /// If that takes longer than [`TestConfig::settle_timeout`], with what is still going on.
    pub async fn settled(&self) {
        let shared = &self.recorder.shared;
        let deadline = tokio::time::Instant::now() + self.settle_timeout;
        loop {
            let notified = shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if shared.is_settled() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "the test app did not settle within {:?}: {}",
                    self.settle_timeout,
                    shared.describe_activity()
                );
            }
        }
    }

    /// Every value published to `T`'s topic (by handlers or by the test), decoded as JSON. For a
    /// command or event type, only the messages of that type (or of no stated type): several
    /// types may share a topic.
    ///
    /// # Panics
    /// If one does not decode as `T`.
    pub fn published<T: Topic + DeserializeOwned>(&self) -> Vec<T> {
        let of_type = |message: &Message| match (T::MESSAGE_TYPE, MessageType::name_of(message)) {
            (Some(expected), Some(name)) => expected.name == name,
            _ => true,
        };
        self.published_on(T::NAME)
            .iter()
            .filter(|message| of_type(message))
            .map(|message| {
                JsonCodec.decode(message.payload()).unwrap_or_else(|error| {
                    panic!(
                        "a message on `{}` does not decode as {}: {error}",
                        T::NAME,
                        std::any::type_name::<T>()
                    )
                })
            })
            .collect()
    }

    /// Every message published to `topic`, in order.
    pub fn published_on(&self, topic: &str) -> Vec<Message> {
        let record = self.recorder.shared.record.lock();
        record.published.iter().filter(|(t, _)| t == topic).map(|(_, m)| m.clone()).collect()
    }

    /// Every message published, with its topic, in order.
    pub fn published_all(&self) -> Vec<(String, Message)> {
        self.recorder.shared.record.lock().published.clone()
    }

    /// Every delivery and how it ended, in order.
    pub fn settlements(&self) -> Vec<Settlement> {
        self.recorder.shared.record.lock().settlements.clone()
    }

    fn settled_as(&self, topic: &str, outcome: Outcome) -> Vec<Message> {
        let record = self.recorder.shared.record.lock();
        record
            .settlements
            .iter()
            .filter(|s| s.topic == topic && s.outcome == outcome)
            .map(|s| s.message.clone())
            .collect()
    }

    /// The deliveries from `topic` that were acked.
    pub fn acked(&self, topic: &str) -> Vec<Message> {
        self.settled_as(topic, Outcome::Acked)
    }

    /// The deliveries from `topic` that were nacked (each attempt counts once).
    pub fn nacked(&self, topic: &str) -> Vec<Message> {
        self.settled_as(topic, Outcome::Nacked)
    }

    /// The deliveries from `topic` that failed their last allowed attempt.
    pub fn gave_up(&self, topic: &str) -> Vec<Message> {
        self.settled_as(topic, Outcome::GaveUp)
    }

    /// Every message sent to a poison topic, in order: by the router's own poison path (its
    /// [`poison_topic`](crate::RouterConfig::poison_topic)) and by any
    /// [`PoisonQueue`](crate::middleware::PoisonQueue) layer, whatever its topic. They are told
    /// apart by their [`poison_reason`](Message::poison_reason) metadata, which both set.
    pub fn poisoned(&self) -> Vec<Message> {
        let record = self.recorder.shared.record.lock();
        record.published.iter().filter(|(_, m)| m.poison_reason().is_some()).map(|(_, m)| m.clone()).collect()
    }

    /// Stops the app gracefully (in-flight messages finish).
    pub async fn stop(self) -> Result<()> {
        self.router.shutdown();
        self.router.close().await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.router.shutdown();
    }
}

impl fmt::Debug for TestApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestApp")
            .field("router", &self.router)
            .field("activity", &self.recorder.shared.describe_activity())
            .finish()
    }
}

/// The in-memory backend that counts what is going on and records what happened.
#[derive(Clone)]
struct Recorder {
    shared: Arc<Shared>,
}

struct Shared {
    inner: MemoryPubSub,
    max_attempts: u32,
    record: Mutex<Record>,
    changed: Notify,
    next_token: AtomicU64,
}

#[derive(Default)]
struct Record {
    published: Vec<(String, Message)>,
    settlements: Vec<Settlement>,
    topics: BTreeSet<String>,
    pending: HashMap<u64, Pending>,
    publishing: usize,
    polling: usize,
    /// Bumped on every change, so that a settled check spanning two looks sees a quiet moment.
    epoch: u64,
}

struct Pending {
    acker: Option<Acker>,
    topic: String,
    group: Option<String>,
    message: Message,
    attempt: u32,
}

impl Recorder {
    fn new(max_attempts: u32) -> Self {
        Recorder {
            shared: Arc::new(Shared {
                inner: MemoryPubSub::new(),
                max_attempts,
                record: Mutex::new(Record::default()),
                changed: Notify::new(),
                next_token: AtomicU64::new(0),
            }),
        }
    }
}

impl Shared {
    fn update<R>(&self, change: impl FnOnce(&mut Record) -> R) -> R {
        let mut record = self.record.lock();
        record.epoch += 1;
        let result = change(&mut record);
        drop(record);
        self.changed.notify_waiters();
        result
    }

    /// Counters at zero, queues empty, and no change while the queues were read.
    fn is_settled(&self) -> bool {
        let (epoch, topics) = {
            let record = self.record.lock();
            if record.publishing > 0 || record.polling > 0 || !record.pending.is_empty() {
                return false;
            }
            (record.epoch, record.topics.clone())
        };
        if topics.iter().any(|t| self.inner.queued(t) > 0) {
            return false;
        }
        self.record.lock().epoch == epoch
    }

    fn describe_activity(&self) -> String {
        let record = self.record.lock();
        let queued: Vec<_> = record
            .topics
            .iter()
            .filter_map(|t| match self.inner.queued(t) {
                0 => None,
                n => Some(format!("{t}: {n}")),
            })
            .collect();
        let handling: Vec<_> =
            record.pending.values().map(|p| format!("{} (attempt {})", p.topic, p.attempt)).collect();
        format!(
            "{} being published, {} deliveries being handled {handling:?}, queued {queued:?}",
            record.publishing,
            record.pending.len()
        )
    }
}

/// Decrements the publishing count however the publish ends.
struct Publishing(Arc<Shared>);

impl Drop for Publishing {
    fn drop(&mut self) {
        self.0.update(|r| r.publishing -= 1);
    }
}

impl Publisher for Recorder {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        self.shared.update(|r| r.publishing += 1);
        let guard = Publishing(self.shared.clone());
        OpFuture::boxed(async move {
            let copy = message.clone();
            let result = self.shared.inner.publish(topic, message).await;
            if result.is_ok() {
                self.shared.update(|r| r.published.push((topic.to_owned(), copy)));
            }
            drop(guard);
            result
        })
    }

    fn close(&self) -> OpFuture<'_> {
        Publisher::close(&self.shared.inner)
    }
}

impl Subscriber for Recorder {
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription> {
        OpFuture::boxed(async move {
            let group = options.group.clone();
            let inner = self.shared.inner.subscribe(topic, options).await?;
            self.shared.update(|r| r.topics.insert(topic.to_owned()));
            Ok(Subscription::new(RecordingStream {
                inner,
                shared: self.shared.clone(),
                topic: topic.to_owned(),
                group,
            }))
        })
    }

    fn close(&self) -> OpFuture<'_> {
        Subscriber::close(&self.shared.inner)
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> OpFuture<'a> {
        self.shared.inner.delete_topic(topic)
    }

    fn features(&self) -> crate::pubsub::Features {
        self.shared.inner.features()
    }
}

struct RecordingStream {
    inner: Subscription,
    shared: Arc<Shared>,
    topic: String,
    group: Option<String>,
}

impl Stream for RecordingStream {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Counted while polling: a message taken off the queue is never in nobody's count.
        this.shared.update(|r| r.polling += 1);
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        let result = match polled {
            Poll::Ready(Some(Ok(delivery))) => {
                let (message, attempt, acker) = delivery.into_parts();
                let token = this.shared.next_token.fetch_add(1, Ordering::Relaxed);
                let pending = Pending {
                    acker: Some(acker),
                    topic: this.topic.clone(),
                    group: this.group.clone(),
                    message: message.clone(),
                    attempt,
                };
                this.shared.update(|r| r.pending.insert(token, pending));
                let sink: Arc<dyn AckSink> = Arc::new(Sink(this.shared.clone()));
                Poll::Ready(Some(Ok(Delivery::new(
                    message,
                    attempt,
                    Acker::new(sink, Token::new(token), None),
                ))))
            }
            other => other,
        };
        this.shared.update(|r| r.polling -= 1);
        result
    }
}

/// Settles the inner delivery and records how.
struct Sink(Arc<Shared>);

impl Sink {
    fn settle(&self, token: u64, how: Settle) -> OpFuture<'static> {
        let shared = self.0.clone();
        // The entry stays pending until the inner backend has requeued or dropped the message, so
        // that the message is always counted somewhere.
        let taken =
            shared.record.lock().pending.get_mut(&token).and_then(|p| Some((p.acker.take()?, p.attempt)));
        let Some((acker, attempt)) = taken else { return OpFuture::ready(Ok(())) };
        let (outcome, op) = match how {
            Settle::Ack => (Outcome::Acked, acker.ack()),
            Settle::Nack(_) if attempt >= shared.max_attempts => (Outcome::GaveUp, acker.ack()),
            Settle::Nack(delay) => (Outcome::Nacked, acker.nack_after(delay)),
            Settle::Reject(reason) => (Outcome::Rejected, acker.reject(reason)),
            Settle::Release => (Outcome::Released, acker.release()),
        };
        OpFuture::boxed(async move {
            let result = op.await;
            shared.update(|r| {
                if let Some(Pending { topic, group, message, attempt, .. }) = r.pending.remove(&token) {
                    r.settlements.push(Settlement { topic, group, message, attempt, outcome });
                }
            });
            result
        })
    }
}

impl AckSink for Sink {
    fn settle(&self, token: Token, _message: Option<Message>, how: Settle) -> OpFuture<'static> {
        Sink::settle(self, token.get(), how)
    }
}
