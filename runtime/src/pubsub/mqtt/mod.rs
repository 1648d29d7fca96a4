//! [`MqttPubSub`]: MQTT v5 (`mqtt` feature), over rumqttc, tested against Mosquitto 2.
//!
//! # Mapping
//! - A topic is an MQTT topic name (`sensors/7/temp`). With
//!   [`SubscribeOptions::pattern`](crate::SubscribeOptions::pattern) a subscription's topic is a
//!   filter with `+` and `#`, and each delivery's [`DeliveryInfo::topic`](crate::DeliveryInfo::topic)
//!   names the concrete topic.
//! - Publishes use QoS 1 (at least once) by default; [`MqttConfig::qos`] and
//!   [`MqttPublish`] choose QoS 0 or 2, and [`MqttPubSub::publish_with`] publishes a retained
//!   message (delivered with [`DeliveryInfo::retained`](crate::DeliveryInfo::retained) set). A
//!   publish returns once the broker acknowledged it (PUBACK, PUBCOMP).
//! - The message id, the metadata and the [key](crate::Message::with_key) travel as MQTT v5 user
//!   properties (see `codec.rs`: metadata with control characters, which Mosquitto refuses, is
//!   escaped).
//! - A consumer group is a shared subscription, `$share/<group>/<topic>`, held by one persistent
//!   session per process (clean start off, [`MqttConfig::session_expiry`]); the process's
//!   subscriptions of that group take their deliveries from it. Its client id is made from
//!   [`MqttConfig::instance`], the group and the topic, so a restarted replica resumes its
//!   session and gets back what it had not acknowledged, and what was queued for it meanwhile.
//!   Several processes with distinct instances are several members, and the broker spreads the
//!   messages among them. The first subscription of a group in a process opens the session, and
//!   its options (pattern, [`max_in_flight`](crate::SubscribeOptions::max_in_flight),
//!   [`MqttSubscribe`]) hold for the subscriptions that join it. A subscription without a group has a session of its own that ends
//!   with it: it receives what is published while it is connected (and, unless
//!   [`MqttSubscribe::retained`] says otherwise, the topic's retained message).
//! - PUBACKs leave in the order the messages arrived, as MQTT requires: acks arrive in any order
//!   (concurrent handlers) and a [`Watermark`](crate::pubsub::watermark::Watermark) releases them
//!   in order ([`Settlement::Cumulative`]). One slow delivery holds back the PUBACKs behind it,
//!   and once [`MqttConfig::receive_maximum`] deliveries are unacknowledged the broker waits.
//!
//! # No nack in MQTT
//! MQTT cannot give a message back: a broker sends an unacknowledged message again only when
//! the session resumes. So **nack** and **release** resume the session: the connection is closed
//! and opened again (after the nack's delay, if any) and the broker sends every message not yet
//! acknowledged, the nacked one among them, marked DUP. The other deliveries in flight at that
//! moment come back too (their late acks are reported as errors and change nothing): a nack is
//! expensive, and duplicates follow it. Resumes that follow each other within a second are paced
//! like reconnections, so a handler that fails every message does not storm the broker. The attempt count is exact while the process runs and
//! "at least 2" for a DUP message it has not seen ([`Attempts::AtLeast`]). **Reject** sends the
//! PUBACK (MQTT has no dead letter): the router publishes a rejected message to its poison topic
//! before it rejects it. A delivery left unsettled by a process that dies comes back when its
//! session resumes.
//!
//! # Reconnection
//! Every connection's event loop is polled in its own task and reconnects by itself, waiting
//! [`MqttConfig::reconnect_min`] at first, doubling up to [`MqttConfig::reconnect_max`]. A
//! publish in flight when the connection is lost fails (it may have arrived; a retry may
//! duplicate it); a group's session resumes and the broker resends what was not acknowledged.
//!
//! # Mosquitto
//! - A session's messages wait on the broker while it is offline, but Mosquitto keeps at most
//!   `max_queued_messages` of them (1000 by default; and `max_queued_bytes`) and **drops the
//!   rest** silently. Raise it in `mosquitto.conf` for consumers that may be away long.
//! - Mosquitto gives each member of a shared subscription its turn, offline members included: a
//!   replica that goes away keeps its share waiting in its session until it comes back (with the
//!   same [`MqttConfig::instance`]) or the session expires, when the broker drops them. Retire
//!   a replica for good only once it has drained, or give its instance to a new one.
//! - Sessions survive a broker restart when the broker has `persistence true`.
//! - A QoS 2 subscription is refused (rumqttc forgets its QoS 2 receive state when it
//!   reconnects, and the broker's repeated PUBREL would break every new connection); QoS 2
//!   publishing works.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures_util::StreamExt;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use tokio_util::sync::CancellationToken;

use self::connection::Session;
use self::publisher::{PubConn, Target};
use self::session::{SessionHandle, Spec};
use super::{
    check_size, closed_error, Attempts, Features, OpFuture, Publisher, Settlement, SubscribeOptions,
    Subscriber, Subscription,
};
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;

mod codec;
mod config;
mod connection;
mod publisher;
mod session;

pub use self::config::{MqttConfig, MqttPublish, MqttSubscribe, Qos, Secret};
pub use rumqttc::TlsConfiguration;

/// The MQTT v5 pub/sub. Cheap to clone.
///
/// ```no_run
/// # use millstream::pubsub::mqtt::{MqttConfig, MqttPubSub};
/// # use millstream::{Message, Publisher, Subscriber, SubscribeOptions};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
/// let config = MqttConfig::from_url("mqtt://127.0.0.1:1883", "billing-0")?;
/// let pubsub = MqttPubSub::connect(config).await?;
/// let mut orders = pubsub.subscribe("orders/placed", SubscribeOptions::group("billing")).await?;
/// pubsub.publish("orders/placed", Message::new(r#"{"id":1}"#)).await?;
/// let delivery = orders.next().await.expect("open")?;
/// delivery.ack().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MqttPubSub {
    inner: Arc<Inner>,
}

struct Inner {
    config: MqttConfig,
    publisher: PubConn,
    /// Each group's session, by (topic, group), while a subscription holds it.
    groups: tokio::sync::Mutex<HashMap<(String, String), Weak<SessionHandle>>>,
    cancel: CancellationToken,
    publisher_closed: AtomicBool,
    subscriber_closed: AtomicBool,
}

impl fmt::Debug for MqttPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttPubSub").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

/// FNV-1a: a stable hash for client ids.
fn fnv(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

fn config_error(text: String) -> Error {
    Error::new(ErrorKind::Config, text)
}

/// A topic name to publish to: not empty, no wildcards, no NUL.
fn check_topic(topic: &str) -> Result<()> {
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        return Err(config_error(format!(
            "topic {topic:?} is not an MQTT topic name (not empty, no '+', '#')"
        )));
    }
    Ok(())
}

/// A topic filter: `+` only as a whole level, `#` only as the last level.
fn check_filter(filter: &str, pattern: bool) -> Result<()> {
    if !pattern {
        return check_topic(filter);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let valid = !filter.is_empty()
        && !filter.contains('\0')
        && levels.iter().enumerate().all(|(i, level)| {
            (*level == "+" || !level.contains('+'))
                && (*level != "#" || i == levels.len() - 1)
                && (*level == "#" || !level.contains('#'))
        });
    if valid {
        Ok(())
    } else {
        Err(config_error(format!(
            "topic filter {filter:?} is not valid ('+' a whole level, '#' the last level)"
        )))
    }
}

impl MqttPubSub {
    /// Connects the publishing connection (subscriptions open their own). Fails when the broker
    /// cannot be reached; afterwards every connection reconnects by itself.
    pub async fn connect(config: MqttConfig) -> Result<Self> {
        config.check()?;
        let client_id = format!("ms-{}-pub-{}", config.instance, uuid::Uuid::now_v7().simple());
        let publisher = PubConn::connect(&config, client_id).await?;
        Ok(MqttPubSub {
            inner: Arc::new(Inner {
                config,
                publisher,
                groups: tokio::sync::Mutex::new(HashMap::new()),
                cancel: CancellationToken::new(),
                publisher_closed: AtomicBool::new(false),
                subscriber_closed: AtomicBool::new(false),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &MqttConfig {
        &self.inner.config
    }

    /// Publishes with MQTT options: a QoS of its own, or retained (see [`MqttPublish`]).
    pub async fn publish_with(&self, topic: &str, message: Message, options: MqttPublish) -> Result<()> {
        self.publish_all(topic, vec![message], options).await
    }

    /// Clears `topic`'s retained message: an empty retained publish, which MQTT also forwards
    /// to the topic's current subscribers as an empty message.
    pub async fn clear_retained(&self, topic: &str) -> Result<()> {
        check_topic(topic)?;
        let target = Target { topic, qos: self.inner.config.qos.raw(), retain: true };
        self.send(target, std::iter::once((PublishProperties::default(), Bytes::new()))).await
    }

    /// Hands the publishes over and waits for every acknowledgement, within one
    /// `publish_timeout` for them all (one timer for a batch, not one per message).
    async fn send(
        &self,
        target: Target<'_>,
        publishes: impl ExactSizeIterator<Item = (PublishProperties, Bytes)> + Send,
    ) -> Result<()> {
        let all = async { self.inner.publisher.send(target, publishes).await?.wait().await };
        match tokio::time::timeout(self.inner.config.publish_timeout, all).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::Backend,
                format!(
                    "MQTT: no acknowledgement within {:?} (the message may still arrive)",
                    self.inner.config.publish_timeout
                ),
            )),
        }
    }

    /// Checks every size first (none is sent when one is too large), then encodes each message
    /// as it is handed over, so that the connection writes the first while the rest are encoded.
    async fn publish_all(&self, topic: &str, messages: Vec<Message>, options: MqttPublish) -> Result<()> {
        if self.inner.publisher_closed.load(Ordering::Acquire) {
            return Err(closed_error("MQTT publisher is closed"));
        }
        check_topic(topic)?;
        let config = &self.inner.config;
        let qos = options.qos.unwrap_or(config.qos).raw();
        let packet_limit = match self.inner.publisher.server_max() {
            Some(server) => config.packet_limit().min(server),
            None => config.packet_limit(),
        };
        for message in &messages {
            check_size("payload", message.payload().len(), config.max_payload, "MqttConfig::max_payload")?;
            if codec::packet_bound(topic, message) > packet_limit {
                // Near the limit: the exact size (+ 2: the packet id, not set yet).
                let (properties, payload) = codec::encode(message.clone());
                check_size(
                    "packet",
                    Publish::new(topic, qos, payload, Some(properties)).size() + 2,
                    packet_limit,
                    "MqttConfig::max_payload + 64 KiB, or the broker's maximum packet size",
                )?;
            }
        }
        let target = Target { topic, qos, retain: options.retain };
        self.send(target, messages.into_iter().map(codec::encode)).await
    }

    async fn open(&self, topic: &str, options: SubscribeOptions) -> Result<Arc<SessionHandle>> {
        check_filter(topic, options.pattern)?;
        let config = &self.inner.config;
        let mqtt = options.extensions.get::<MqttSubscribe>().copied().unwrap_or_default();
        if mqtt.qos == Qos::ExactlyOnce {
            return Err(config_error(
                "MQTT: QoS 2 subscriptions are not supported (see the mqtt module docs); use QoS 1"
                    .to_owned(),
            ));
        }
        let receive_maximum = options
            .max_in_flight
            .map_or(config.receive_maximum, |max| u16::try_from(max).unwrap_or(u16::MAX))
            .max(1);
        let Some(group) = options.group else {
            let spec = Spec {
                session: Session {
                    client_id: format!("ms-{}-sub-{}", config.instance, uuid::Uuid::now_v7().simple()),
                    clean_start: true,
                    expiry: None,
                    receive_maximum,
                },
                filter: topic.to_owned(),
                qos: mqtt.qos.raw(),
                retained: mqtt.retained,
                pattern: options.pattern,
                claim: None,
            };
            return Ok(Arc::new(SessionHandle::open(config, spec, &self.inner.cancel).await?));
        };
        if group.is_empty() || group.contains(['/', '+', '#', '\0']) {
            return Err(config_error(format!(
                "group {group:?} is not an MQTT share name (no '/', '+', '#')"
            )));
        }
        let mut groups = self.inner.groups.lock().await;
        let key = (topic.to_owned(), group.clone());
        if let Some(session) = groups.get(&key).and_then(Weak::upgrade) {
            return Ok(session);
        }
        let clean: String = group
            .chars()
            .take(40)
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .collect();
        let base = format!("ms-{}-{clean}-{:016x}", config.instance, fnv(&format!("{group}\0{topic}")));
        let (client_id, claim, guard) = connection::claim(&base).await;
        let spec = Spec {
            session: Session {
                client_id,
                clean_start: false,
                expiry: Some(config.session_expiry),
                receive_maximum,
            },
            filter: format!("$share/{group}/{topic}"),
            qos: mqtt.qos.raw(),
            retained: mqtt.retained,
            pattern: options.pattern,
            claim: Some((claim, guard)),
        };
        let session = Arc::new(SessionHandle::open(config, spec, &self.inner.cancel).await?);
        groups.retain(|_, session| session.strong_count() > 0);
        groups.insert(key, Arc::downgrade(&session));
        Ok(session)
    }
}

impl Publisher for MqttPubSub {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        OpFuture::boxed(self.publish_all(topic, vec![message], MqttPublish::new()))
    }

    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> OpFuture<'a> {
        OpFuture::boxed(self.publish_all(topic, messages, MqttPublish::new()))
    }

    fn close(&self) -> OpFuture<'_> {
        self.inner.publisher_closed.store(true, Ordering::Release);
        OpFuture::boxed(async move {
            self.inner.publisher.close().await;
            Ok(())
        })
    }
}

impl Subscriber for MqttPubSub {
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription> {
        if self.inner.subscriber_closed.load(Ordering::Acquire) {
            return OpFuture::ready(Err(closed_error("MQTT subscriber is closed")));
        }
        OpFuture::boxed(async move {
            let session = self.open(topic, options).await?;
            let deliveries = session.deliveries().into_stream();
            // The stream holds the session: the last subscription dropped ends the connection.
            Ok(Subscription::new(futures_util::stream::unfold(
                (session, deliveries),
                |(session, mut deliveries)| async move {
                    let item = deliveries.next().await?;
                    Some((item, (session, deliveries)))
                },
            )))
        })
    }

    fn close(&self) -> OpFuture<'_> {
        self.inner.subscriber_closed.store(true, Ordering::Release);
        self.inner.cancel.cancel();
        OpFuture::ready(Ok(()))
    }

    fn features(&self) -> Features {
        Features {
            backend: "mqtt",
            consumer_groups: true,
            persistent: true,
            ordered: true,
            history: false,
            redelivery: true,
            ordered_single_subscriber: true,
            strict_order: false,
            exactly_once: false,
            nack_delay: true,
            max_payload: Some(self.inner.config.max_payload),
            settlement: Settlement::Cumulative,
            ordered_per_key: false,
            attempts: Attempts::AtLeast,
            dead_letter: false,
            release_uncounted: false,
            refuses_unroutable: false,
        }
    }
}
