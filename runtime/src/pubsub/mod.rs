//! The [`Publisher`] and [`Subscriber`] traits every backend implements, and the types they share
//! (the backend contract, v2): [`Delivery`] (a received message that must be settled: ack, nack,
//! reject or release), [`DeliveryInfo`], [`Subscription`] (a stream of deliveries),
//! [`SubscribeOptions`], [`Features`] (what a backend guarantees, read by the router and the
//! conformance suite) and the [`Watermark`](watermark::Watermark) that cumulative backends settle
//! through.
//!
//! A delivery is settled in one of four ways ([`Settle`]):
//! - **ack**: handled; never deliver it again;
//! - **nack** (with an optional delay): not handled; deliver it again, counting an attempt;
//! - **reject** (with a reason): never deliver it again, and dead-letter it where the broker has
//!   a dead letter of its own ([`Features::dead_letter`]: AMQP's
//!   dead-letter exchange, NATS's TERM); elsewhere the router publishes it to its poison topic
//!   before it rejects, and the backend drops it;
//! - **release**: give it back without handling it and, where the broker allows
//!   ([`Features::release_uncounted`]), without counting an
//!   attempt: what shutdown does with the deliveries it aborts, and what a dropped [`Acker`] does.
//!
//! Both traits are object-safe: the router holds `Arc<dyn Publisher>` and `Arc<dyn Subscriber>`.
//! Operations return [`OpFuture`], which is either already complete (no allocation, the in-memory
//! fast path) or a boxed future (network backends).

use std::fmt;

use crate::error::{Error, Result};
use crate::message::Message;
pub use crate::op::OpFuture;

pub(crate) mod delivery;
mod features;
mod identity;
mod subscribe;

pub use self::delivery::{AckSink, Acker, Delivery, DeliveryInfo, DeliveryInfos, Settle, Token};
pub use self::features::{Attempts, Features, Settlement};
pub use self::identity::{check_consumer_name, host_name, incarnation, MAX_CONSUMER_NAME};
pub use self::subscribe::{Extensions, StartFrom, SubscribeOptions, Subscription};

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "mqtt")]
pub mod mqtt;
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

    /// Whether this publisher holds a message that carries a delivery time
    /// ([`Message::deliver_at`]) until then: a [`Scheduler`](crate::delay::Scheduler) does, and so
    /// does a wrapper around one. Backends publish at once (default `false`); the router hands a
    /// long retry delay to a publisher that delays ([`RouterConfig::requeue_after`](crate::RouterConfig::requeue_after)).
    fn delays(&self) -> bool {
        false
    }
}

/// Receives messages from topics.
pub trait Subscriber: Send + Sync + 'static {
    /// Subscribes to `topic`. Subscriptions with the same [`SubscribeOptions::group`] share the
    /// messages (each is delivered to one of them); each group, and each subscription without a
    /// group, gets every message.
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription>;

    /// Ends every subscription's stream and releases the backend.
    fn close(&self) -> OpFuture<'_>;

    /// Deletes `topic` for good (its messages, consumer groups, and whatever the backend keeps for
    /// it): for a topic the caller owns and no longer reads, such as a
    /// [`Requester`](crate::Requester)'s reply topic. Close its subscriptions first. The default
    /// does nothing: for a backend that keeps nothing per topic once its subscriptions end (AMQP's
    /// group-less queues are exclusive and auto-deleted; MQTT keeps only retained messages).
    fn delete_topic<'a>(&'a self, topic: &'a str) -> OpFuture<'a> {
        let _ = topic;
        OpFuture::ready(Ok(()))
    }

    /// What this backend guarantees; the conformance suite reads it to choose its cases (the
    /// router does not read it yet).
    fn features(&self) -> Features {
        Features::default()
    }
}

/// A backend that both publishes and subscribes, like every built-in backend.
pub trait PubSub: Publisher + Subscriber {}

impl<T: Publisher + Subscriber> PubSub for T {}

/// Refuses a message too large for a backend before it is sent: `Ok` when `size` bytes are at most
/// `limit`; otherwise a **permanent** [`ErrorKind::Config`](crate::error::ErrorKind::Config) error
/// (resending cannot make it fit), saying "message too large: {counted} of {size} bytes, over the
/// limit of {limit} bytes ({why})".
///
/// `counted` names what `size` counts (`"payload"`, or `"payload and headers"` where a broker
/// counts both); `why` says where the limit comes from, and is formatted only on failure.
///
/// ```
/// # use millstream::pubsub::check_size;
/// let error = check_size("payload", 2048, 1024, "MemoryConfig::max_payload").unwrap_err();
/// assert!(error.is_permanent());
/// assert_eq!(
///     error.message(),
///     "message too large: payload of 2048 bytes, over the limit of 1024 bytes (MemoryConfig::max_payload)"
/// );
/// ```
pub fn check_size(counted: &str, size: usize, limit: usize, why: impl fmt::Display) -> Result<()> {
    if size <= limit {
        return Ok(());
    }
    let text =
        format!("message too large: {counted} of {size} bytes, over the limit of {limit} bytes ({why})");
    Err(Error::new(crate::error::ErrorKind::Config, text).into_permanent())
}

/// Errors a backend reports for a closed publisher or subscriber.
pub fn closed_error(what: &'static str) -> Error {
    Error::new(crate::error::ErrorKind::Closed, what)
}
