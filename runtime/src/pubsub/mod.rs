//! The [`Publisher`] and [`Subscriber`] traits every backend implements, and the types they share:
//! [`Delivery`] (a received message that must be acked or nacked), [`Subscription`] (a stream of
//! deliveries) and [`SubscribeOptions`].
//!
//! Both traits are object-safe: the router holds `Arc<dyn Publisher>` and `Arc<dyn Subscriber>`.
//! Operations return [`OpFuture`], which is either already complete (no allocation, the in-memory
//! fast path) or a boxed future (network backends).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use crate::error::{Error, Result};
use crate::message::Message;
pub use crate::op::OpFuture;

#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sql")]
pub mod sql;
pub mod watermark;

/// Sends messages to topics.
///
/// Implementations must be cheap to share (`Arc<dyn Publisher>`). A publish that returns `Ok` has
/// been accepted by the backend with the backend's durability (for the in-memory backend: queued
/// for every consumer group of the topic).
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message to `topic`. May wait (backpressure) while consumers are behind.
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a>;

    /// Publishes several messages to `topic`, in order. The default publishes one by one.
    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> OpFuture<'a> {
        OpFuture::boxed(async move {
            for message in messages {
                self.publish(topic, message).await?;
            }
            Ok(())
        })
    }

    /// Flushes and closes; later publishes fail with [`ErrorKind::Closed`](crate::ErrorKind::Closed).
    fn close(&self) -> OpFuture<'_>;
}

/// Receives messages from topics.
pub trait Subscriber: Send + Sync + 'static {
    /// Subscribes to `topic`. Subscriptions with the same [`SubscribeOptions::group`] share the
    /// messages (each is delivered to one of them); each group, and each subscription without a
    /// group, gets every message.
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription>;

    /// Ends every subscription's stream and releases the backend.
    fn close(&self) -> OpFuture<'_>;

    /// What this backend guarantees; the conformance suite reads it to choose its cases (the
    /// router does not read it yet).
    fn features(&self) -> Features {
        Features::default()
    }
}

/// A backend that both publishes and subscribes, like every built-in backend.
pub trait PubSub: Publisher + Subscriber {}

impl<T: Publisher + Subscriber> PubSub for T {}

/// What a backend guarantees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Features {
    /// Subscriptions in one group share messages.
    pub consumer_groups: bool,
    /// Messages survive a restart of the process or server.
    pub persistent: bool,
    /// Messages of a topic (or partition) are delivered in publish order.
    pub ordered: bool,
    /// A subscriber that arrives late can read messages published before it subscribed.
    pub history: bool,
    /// A nacked message is delivered again.
    pub redelivery: bool,
    /// Order ([`ordered`](Features::ordered)) holds only while a group has a single subscription:
    /// with several, each gets its share in order, but nothing orders one subscription's deliveries
    /// against another's.
    pub ordered_single_subscriber: bool,
    /// A group gets its next message only once the one before is settled, so a nacked (or expired)
    /// message comes back before anything published after it. Implies [`ordered`](Features::ordered).
    pub strict_order: bool,
    /// An acked message is never delivered to its group again, and in a run without failures (no
    /// nack, no expired ack deadline, no crash, no server restart) every message reaches each group
    /// exactly once. The conformance suite then fails on any duplicate instead of only reporting it.
    pub exactly_once: bool,
    /// [`Acker::nack_after`] waits the given delay before redelivering.
    pub nack_delay: bool,
    /// The largest payload (bytes) the backend accepts, when it has a limit (a broker's maximum
    /// message size); `None`: at least 1 MiB.
    pub max_payload: Option<usize>,
}

/// How to subscribe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// The consumer group; `None` gives the subscription every message on its own.
    pub group: Option<String>,
}

impl SubscribeOptions {
    /// Options for a subscription in `group`.
    pub fn group(group: impl Into<String>) -> Self {
        SubscribeOptions { group: Some(group.into()) }
    }
}

/// A stream of [`Delivery`]s from one subscription. Dropping it unsubscribes.
pub struct Subscription {
    stream: Pin<Box<dyn Stream<Item = Result<Delivery>> + Send>>,
}

impl Subscription {
    /// Wraps a backend's stream. An `Err` item reports a problem the backend could not recover
    /// from by itself; the stream may go on after it.
    pub fn new(stream: impl Stream<Item = Result<Delivery>> + Send + 'static) -> Self {
        Subscription { stream: Box::pin(stream) }
    }

    /// The next delivery; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        std::future::poll_fn(|cx| self.stream.as_mut().poll_next(cx)).await
    }
}

impl Stream for Subscription {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscription")
    }
}

/// Where a backend settles its deliveries: one implementation per backend (or per subscription).
///
/// The `token` is the backend's own handle on the delivery (a sequence number, an offset, a row
/// id); `message` is present when the backend asked for it in [`Acker::new`].
pub trait AckSink: Send + Sync + 'static {
    /// The message was handled: do not deliver it again.
    fn ack(&self, token: u64, message: Option<Message>) -> OpFuture<'static>;

    /// The message was not handled: deliver it again, after `delay` where the backend supports it.
    fn nack(&self, token: u64, message: Option<Message>, delay: Option<Duration>) -> OpFuture<'static>;
}

/// The right (and duty) to settle one delivery. Dropped unsettled, it nacks.
pub struct Acker {
    sink: Option<Arc<dyn AckSink>>,
    token: u64,
    message: Option<Message>,
}

impl Acker {
    /// An acker settling `token` on `sink`; `message` is handed back to the sink when settling
    /// (the in-memory backend needs it to redeliver).
    pub fn new(sink: Arc<dyn AckSink>, token: u64, message: Option<Message>) -> Self {
        Acker { sink: Some(sink), token, message }
    }

    /// An acker for a delivery that needs no settling (ack and nack do nothing).
    pub fn noop() -> Self {
        Acker { sink: None, token: 0, message: None }
    }

    /// The copy of the delivered message this acker keeps for the backend (to redeliver it), if
    /// the backend asked for one. The router reuses it instead of cloning the message again.
    pub fn message(&self) -> Option<&Message> {
        self.message.as_ref()
    }

    /// Acknowledges: the message will not be delivered again.
    pub fn ack(mut self) -> OpFuture<'static> {
        match self.sink.take() {
            Some(sink) => sink.ack(self.token, self.message.take()),
            None => OpFuture::ready(Ok(())),
        }
    }

    /// Negatively acknowledges: the message will be delivered again.
    pub fn nack(self) -> OpFuture<'static> {
        self.nack_after(None)
    }

    /// Negatively acknowledges, asking for redelivery after `delay` (honoured where supported).
    pub fn nack_after(mut self, delay: Option<Duration>) -> OpFuture<'static> {
        match self.sink.take() {
            Some(sink) => sink.nack(self.token, self.message.take(), delay),
            None => OpFuture::ready(Ok(())),
        }
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            let op = sink.nack(self.token, self.message.take(), None);
            if !op.is_ready() {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        if let Err(error) = op.await {
                            tracing::warn!(%error, "nack of a dropped delivery failed");
                        }
                    });
                } else {
                    tracing::warn!("a delivery was dropped outside a tokio runtime; its nack was not sent");
                }
            }
        }
    }
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker").field("token", &self.token).field("settled", &self.sink.is_none()).finish()
    }
}

/// A received message, with the duty to [`ack`](Delivery::ack) or [`nack`](Delivery::nack) it.
/// Dropped without either, it is nacked.
#[derive(Debug)]
pub struct Delivery {
    message: Message,
    attempt: u32,
    acker: Acker,
}

impl Delivery {
    /// A delivery of `message`, on its `attempt`-th delivery (1 for the first).
    pub fn new(message: Message, attempt: u32, acker: Acker) -> Self {
        Delivery { message, attempt, acker }
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// How many times this message has been delivered, this time included (1 the first time).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Acknowledges the message.
    pub fn ack(self) -> OpFuture<'static> {
        self.acker.ack()
    }

    /// Negatively acknowledges the message so that it is delivered again.
    pub fn nack(self) -> OpFuture<'static> {
        self.acker.nack()
    }

    /// Splits into the message and its acker.
    pub fn into_parts(self) -> (Message, u32, Acker) {
        (self.message, self.attempt, self.acker)
    }
}

/// Errors a backend reports for a closed publisher or subscriber.
pub fn closed_error(what: &'static str) -> Error {
    Error::new(crate::error::ErrorKind::Closed, what)
}
