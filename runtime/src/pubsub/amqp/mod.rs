//! [`AmqpPubSub`]: RabbitMQ over AMQP 0.9.1 (`amqp` feature), on lapin.
//!
//! # Topology
//! What is declared is a [`Topology`]: one of the [`Preset`]s or your own. The default,
//! [`Preset::groups`], is Watermill's pub/sub with consumer groups: a durable topic exchange
//! (`millstream`), a topic is a routing key, each consumer group a durable queue
//! `<group>.<topic>` bound to it, and a subscription without a group a private queue (exclusive,
//! gone with its connection). [`Preset::work_queue`] shares one queue per topic among every
//! subscription; [`Preset::fan_out`] uses a fanout exchange per topic. Declarations are
//! idempotent; one that conflicts with what the server has (a classic queue declared quorum, a
//! different dead-letter exchange) fails with a permanent [`ErrorKind::Config`](crate::ErrorKind::Config) error naming the
//! queue and the argument.
//!
//! # Publishing
//! Every publish is `mandatory` and waits for the broker's confirm before it returns `Ok`: the
//! message is stored (persistent, delivery mode 2) in every queue it routes to. A message that
//! routes to no queue (a topic without any group yet, under [`Preset::groups`]) is returned by
//! the broker, and the publish fails with an "unroutable" error instead of the message being
//! dropped ([`Features::refuses_unroutable`]). The message id travels as `message-id`, the
//! metadata (the [key](crate::Message::with_key) included) as string headers: a metadata key
//! over 255 bytes (AMQP's limit for a header name) is refused at publish.
//!
//! # Settling
//! A subscription has a channel of its own whose prefetch (`basic.qos`) is
//! [`SubscribeOptions::max_in_flight`] (or [`AmqpConfig::prefetch`]): the broker never has more
//! deliveries out to it unsettled.
//! - ack is `basic.ack`; nack and release are `basic.nack` with requeue;
//! - reject publishes a copy to the queue's dead-letter exchange (`<exchange>.dlx`, routing it to
//!   the dead-letter queue `<queue>.dlq`) with the reason in the
//!   [`poison::REASON`](crate::keys::poison::REASON) header, waits for its confirm, then acks
//!   ([`Features::dead_letter`]): a plain `basic.reject` could not carry the reason;
//! - a delayed nack (`nack_after`) goes through a **retry queue** (the delayed-message plugin is
//!   not needed): the delay is rounded up to a class of [`AmqpConfig::retry_delays`] (1 s, 5 s,
//!   30 s, 2 min, 10 min by default), a copy is published to `<queue>.retry.<ms>ms` (declared on
//!   first use: classic, durable, `x-message-ttl` of the class, dead-lettering to the default
//!   exchange with the queue's name as routing key), then the delivery is acked. When the TTL
//!   runs out the broker moves the copy back into the queue. Ordering of that message against
//!   later ones is lost, as with any delay.
//!
//! A copy is published and confirmed before the original is acked, so a crash in between gives
//! a duplicate, never a loss.
//!
//! # Attempts
//! Classic queues only flag a redelivery (`redelivered`): attempt 2 means "at least 2"
//! ([`Attempts::AtLeast`]). Quorum queues ([`Preset::quorum`]) count deliveries
//! (`x-delivery-count`): attempts are [`Attempts::Exact`]. Attempts made before a retry queue
//! travel in the `x-millstream-attempts` header and are added.
//!
//! # Connection
//! One connection per [`AmqpPubSub`], made again with backoff (100 ms doubling up to
//! [`AmqpConfig::max_backoff`]) after the server restarted or the connection dropped (while the
//! server is away a publish fails at once, saying when the next attempt is due); each
//! subscription re-declares its queue and consumes again (a private queue is a new one: what
//! was published in between is not for it). Deliveries taken before that are **stale**: their
//! delivery tags belong to a closed channel, and settling one fails with an error instead of
//! being sent on the new channel (where the tag would name another message, or none, and the
//! broker would close the channel). The broker redelivers them anyway.
//!
//! A connection can also die without a close (a peer frozen, a path cut; lapin notices only at
//! the next missed heartbeat): every round trip is bounded instead. A publish waits at most
//! [`AmqpConfig::publish_timeout`] (30 s) for its confirms, attaching a subscription or
//! sending a settle (ack, nack, reject; a settle also fails as soon as lapin reports its channel
//! ended) at most [`AmqpConfig::connect_timeout`] (10 s) per step; past it the call fails with
//! [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) (worth retrying: the message may or may
//! not have been stored) and the connection is dropped, so the next call makes a new one.
//!
//! # consumer_timeout
//! RabbitMQ closes a channel whose delivery stays unacked longer than its `consumer_timeout`
//! (30 min by default, a server setting in 3.10): every unsettled delivery of that channel goes
//! back to the queue. The subscription re-attaches on a new channel and goes on; the slow
//! handler's late settle is refused as stale. Keep handlers well under the timeout, or raise it
//! on the server.
//!
//! # TLS and credentials
//! Both come from the URI: `amqps://user:password@host:5671/vhost` (rustls, the system's roots).
//! The password is redacted wherever the URI is shown ([`AmqpUri`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{
    check_size, closed_error, Attempts, Features, OpFuture, Publisher, Settlement, SubscribeOptions,
    Subscriber, Subscription,
};
use crate::error::Result;
use crate::message::Message;

mod codec;
mod config;
mod consume;
mod link;
mod topology;

pub use self::config::{AmqpConfig, AmqpUri};
pub use self::topology::QueueKind;
pub use self::topology::{retry_queue_name, Declarer, Preset, QueuePlan, QueueSpec, Route, Topology};
/// The future a [`Topology`] returns (boxed, `Send`).
pub use futures_core::future::BoxFuture;
#[doc(no_inline)]
pub use lapin;

/// The RabbitMQ pub/sub. Cheap to clone.
///
/// ```no_run
/// # use millstream::pubsub::amqp::{AmqpPubSub, AmqpConfig, Preset};
/// # use millstream::{Message, Publisher, Subscriber, SubscribeOptions};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
/// let config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .topology(Preset::groups("millstream").quorum());
/// let pubsub = AmqpPubSub::connect(config).await?;
/// let mut orders = pubsub.subscribe("orders.placed", SubscribeOptions::group("billing")).await?;
/// pubsub.publish("orders.placed", Message::new(r#"{"id":1}"#)).await?;
/// let delivery = orders.next().await.expect("open")?;
/// delivery.ack().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AmqpPubSub {
    inner: Arc<Inner>,
}

struct Inner {
    link: Arc<link::Link>,
    cancel: CancellationToken,
    publisher_closed: AtomicBool,
    subscriber_closed: AtomicBool,
}

impl fmt::Debug for AmqpPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpPubSub").field("config", &self.inner.link.config).finish_non_exhaustive()
    }
}

impl AmqpPubSub {
    /// Connects to the server of `config` (and fails if it does not answer).
    pub async fn connect(config: AmqpConfig) -> Result<Self> {
        let pubsub = AmqpPubSub {
            inner: Arc::new(Inner {
                link: Arc::new(link::Link::new(config)),
                cancel: CancellationToken::new(),
                publisher_closed: AtomicBool::new(false),
                subscriber_closed: AtomicBool::new(false),
            }),
        };
        pubsub.inner.link.live().await?;
        Ok(pubsub)
    }

    /// The settings.
    pub fn config(&self) -> &AmqpConfig {
        &self.inner.link.config
    }

    /// The current connection (connecting if there is none), for what this backend does not
    /// cover. Do not close it.
    pub async fn connection(&self) -> Result<Arc<lapin::Connection>> {
        Ok(self.inner.link.live().await?.connection)
    }

    async fn publish_all(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.inner.publisher_closed.load(Ordering::Acquire) {
            return Err(closed_error("AMQP publisher is closed"));
        }
        let config = &self.inner.link.config;
        let mut encoded = Vec::with_capacity(messages.len());
        for message in &messages {
            check_size("payload", message.payload().len(), config.max_payload, "AmqpConfig::max_payload")?;
            encoded.push(codec::encode(message)?);
        }
        let link = &self.inner.link;
        let live = link.live().await?;
        let publish = async {
            let topology = config.topology.clone();
            link.declare_once(&live, ("publish", topic.to_owned()), |declarer| async move {
                let result = topology.declare_publish(&declarer, topic).await;
                declarer.close().await;
                result
            })
            .await?;
            let route = config.topology.publish_route(topic);
            // Send them all, then wait for the confirms.
            let mut confirms = Vec::with_capacity(messages.len());
            for (message, properties) in messages.iter().zip(encoded) {
                match link.send(&live, &route, message.payload(), properties).await {
                    Ok(confirm) => confirms.push(confirm),
                    Err(error) => {
                        link.forget_declarations();
                        return Err(error);
                    }
                }
            }
            for confirm in confirms {
                let confirmation = match confirm.await {
                    Ok(confirmation) => confirmation,
                    Err(error) => {
                        link.forget_declarations();
                        return Err(link::amqp_error(error));
                    }
                };
                link::check_confirm(confirmation, &route)?;
            }
            Ok(())
        };
        let what = if messages.len() == 1 {
            "a publish awaiting its confirm"
        } else {
            "a batch awaiting its confirms"
        };
        link.bounded(&live, config.publish_timeout, what, publish).await
    }

    async fn close_if_done(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.publisher_closed.load(Ordering::Acquire) && inner.subscriber_closed.load(Ordering::Acquire) {
            inner.link.close().await;
        }
        Ok(())
    }
}

impl Publisher for AmqpPubSub {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        OpFuture::boxed(self.publish_all(topic, vec![message]))
    }

    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> OpFuture<'a> {
        OpFuture::boxed(self.publish_all(topic, messages))
    }

    fn close(&self) -> OpFuture<'_> {
        self.inner.publisher_closed.store(true, Ordering::Release);
        OpFuture::boxed(self.close_if_done())
    }
}

impl Subscriber for AmqpPubSub {
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription> {
        if self.inner.subscriber_closed.load(Ordering::Acquire) {
            return OpFuture::ready(Err(closed_error("AMQP subscriber is closed")));
        }
        OpFuture::boxed(async move {
            let config = &self.inner.link.config;
            let consume = consume::Consume::start(
                self.inner.link.clone(),
                config.topology.clone(),
                topic,
                options,
                self.inner.cancel.child_token(),
            )
            .await?;
            Ok(Subscription::new(futures_util::stream::unfold(consume, |mut consume| async move {
                let item = consume.next().await?;
                Some((item, consume))
            })))
        })
    }

    fn close(&self) -> OpFuture<'_> {
        self.inner.subscriber_closed.store(true, Ordering::Release);
        self.inner.cancel.cancel();
        OpFuture::boxed(self.close_if_done())
    }

    fn features(&self) -> Features {
        let config = &self.inner.link.config;
        let base = Features {
            backend: "amqp",
            consumer_groups: true,
            persistent: true,
            ordered: true,
            history: false,
            redelivery: true,
            ordered_single_subscriber: true,
            strict_order: false,
            exactly_once: false,
            nack_delay: true,
            max_payload: Some(config.max_payload),
            settlement: Settlement::Individual,
            ordered_per_key: false,
            attempts: Attempts::AtLeast,
            dead_letter: true,
            release_uncounted: false,
            refuses_unroutable: true,
        };
        config.topology.features(base)
    }
}
