//! [`KafkaPubSub`]: Apache Kafka and Kafka-compatible brokers (`kafka` feature), over rdkafka
//! (librdkafka, built from its bundled sources). Tested against tansu, a Kafka-compatible broker.
//!
//! # Mapping
//! - A topic is a Kafka topic. Topics are not created by default (operators usually do);
//!   [`KafkaConfig::create_topics`] creates missing ones with the partitions you choose, and
//!   [`KafkaPubSub::create_topic`] creates one. Subscribing to a topic that does not exist is an
//!   error (a consumer would otherwise sit without partitions until its next metadata refresh).
//! - The [key](crate::Message::with_key) is the record key, so a key stays on one partition and
//!   its messages keep their order with any number of consumers ([`Features::ordered_per_key`]);
//!   messages without a key are spread over the partitions, and the topic as a whole has no
//!   order. The id and the metadata travel as headers.
//! - A consumer group is a Kafka consumer group: the router's group is the group id, and each
//!   subscription is one member (one librdkafka consumer). A subscription returns once the group
//!   gave it its partitions (none when the group has more members than partitions). A new group
//!   starts at the earliest offset ([`StartFrom::Latest`](crate::pubsub::StartFrom::Latest): the latest).
//!   A subscription without a group reads every partition alone, from the end, or from
//!   [`StartFrom::Earliest`](crate::pubsub::StartFrom::Earliest) or
//!   [`StartFrom::Time`](crate::pubsub::StartFrom::Time); it commits nothing.
//!
//! # Publishing
//! The producer is idempotent (`enable.idempotence`, `acks=all`): librdkafka's retries never
//! store a message twice or out of order. A publish returns once the broker stored the message
//! on every in-sync replica; a batch is sent in one go (librdkafka batches it) and returns once
//! every message is stored. A publish that is not confirmed within
//! [`KafkaConfig::publish_timeout`] fails, saying the message may have been stored; the error of
//! a publish refused before it was sent says it was not.
//!
//! # Settling
//! Kafka commits a position per partition, not messages ([`Settlement::Cumulative`]): each
//! partition has a [`Watermark`](crate::pubsub::watermark::Watermark), and an ack commits only
//! once every earlier delivery of its partition was settled. Offsets are stored as acks allow
//! and committed every [`KafkaConfig::commit_interval`], when a rebalance takes partitions
//! away, and when a subscription closes. A rebalance drops the settles of deliveries from
//! partitions taken away (they are read again by their new owner). The poller keeps librdkafka
//! polled however slow the handlers are (no `max.poll.interval.ms` expiry) and pauses the
//! partitions while [`SubscribeOptions::max_in_flight`] (or [`KafkaConfig::max_in_flight`])
//! deliveries are unsettled.
//!
//! - **nack**: Kafka has none; [`KafkaConfig::redelivery`] chooses. [`Redelivery::Seek`] (the
//!   default) seeks the partition back to the message after the nack's delay (the partition
//!   pauses meanwhile): it comes again, then everything after it; the partition waits for it.
//!   [`Redelivery::Republish`] publishes a copy to the end of the topic, then settles the
//!   original: nothing waits, and the copy's order against later messages of its key is lost.
//! - **release** seeks back without counting an attempt.
//! - **reject** settles like an ack (Kafka has no dead letter): the router publishes the message
//!   to its poison topic first.
//!
//! # Attempts
//! Kafka counts nothing: attempts are counted by the process ([`Attempts::AtLeast`]): a nack
//! seen by this subscription adds one, and [`Redelivery::Republish`] copies carry theirs in the
//! `millstream-attempt` header; a restart, or a rebalance that moves the partition, forgets the
//! count of a seek.
//!
//! # Failures
//! librdkafka reconnects by itself; while the broker is away, publishes wait (up to
//! [`KafkaConfig::publish_timeout`]) and consumers wait. A consumer that dies without closing
//! keeps its partitions until the group's session times out (`session.timeout.ms`, 10 s here);
//! its unacknowledged messages then go to the other members from the last committed offset.
//! A subscription whose group gives it no partitions within [`KafkaConfig::assign_timeout`]
//! fails with [`ErrorKind::Timeout`]; a join still waiting after 10 s is logged at warn level.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::Producer as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::publish::{Producer, ProducerCtx};
use super::{
    closed_error, Attempts, Features, OpFuture, Publisher, Settlement, SubscribeOptions, Subscriber,
    Subscription,
};
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;

mod codec;
mod config;
mod consume;
mod publish;

pub use self::config::{KafkaConfig, Redelivery, TopicSpec};

/// The Kafka pub/sub. Cheap to clone.
///
/// ```no_run
/// # use millstream::pubsub::kafka::{KafkaConfig, KafkaPubSub};
/// # use millstream::{Message, Publisher, Subscriber, SubscribeOptions};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
/// let pubsub = KafkaPubSub::connect(KafkaConfig::new("127.0.0.1:9092")).await?;
/// pubsub.create_topic("orders", 3, 1).await?;
/// let mut orders = pubsub.subscribe("orders", SubscribeOptions::group("billing")).await?;
/// pubsub.publish("orders", Message::new(r#"{"id":1}"#).with_key("customer-7")).await?;
/// let delivery = orders.next().await.expect("open")?;
/// delivery.ack().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KafkaPubSub {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    producer: Producer,
    admin: AdminClient<ProducerCtx>,
    /// Topics known to exist.
    known: Mutex<HashSet<String>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    closing: consume::Closing,
    publisher_closed: AtomicBool,
    subscriber_closed: AtomicBool,
}

impl fmt::Debug for KafkaPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPubSub").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

/// librdkafka's log lines, through `tracing`: warnings and worse at `warn`, the rest at `debug`.
fn log_librdkafka(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {message}"),
        _ => tracing::debug!(facility, "librdkafka: {message}"),
    }
}

/// A Kafka topic name: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic(topic: &str) -> Result<()> {
    let valid = (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Config,
            format!("{topic:?} is not a Kafka topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')"),
        )
        .into_permanent())
    }
}

impl KafkaPubSub {
    /// Connects: makes the producer and the admin client and checks that a broker answers.
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        let producer = Producer::new(&config)?;
        let admin: AdminClient<ProducerCtx> = config
            .client_config(&[])
            .create_with_context(ProducerCtx)
            .map_err(|error| Error::with_source(ErrorKind::Config, error).context("kafka admin client"))?;
        let probe = producer.clone();
        let brokers = config.brokers.clone();
        tokio::task::spawn_blocking(move || {
            probe.inner.client().fetch_metadata(None, Duration::from_secs(10))
        })
        .await
        .map_err(|error| Error::msg(format!("kafka metadata task: {error}")))?
        .map_err(|error| {
            Error::with_source(ErrorKind::Backend, error)
                .context(format!("no Kafka broker answers at {brokers}"))
        })?;
        Ok(KafkaPubSub {
            inner: Arc::new(Inner {
                config,
                producer,
                admin,
                known: Mutex::new(HashSet::new()),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                closing: consume::Closing::default(),
                publisher_closed: AtomicBool::new(false),
                subscriber_closed: AtomicBool::new(false),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// Creates `topic` with `partitions` partitions of `replication` replicas; a topic that
    /// exists already is left as it is. Returns once the topic is in the brokers' metadata.
    pub async fn create_topic(&self, topic: &str, partitions: i32, replication: i32) -> Result<()> {
        check_topic(topic)?;
        // Asked only when missing: tansu 0.6 (SQLite storage) leaves a transaction open when asked
        // to create a topic that exists, and later fetches of other topics then fail.
        if self.topic_exists(topic).await? {
            self.inner.known.lock().insert(topic.to_owned());
            return Ok(());
        }
        let new = NewTopic::new(topic, partitions.max(1), TopicReplication::Fixed(replication.max(1)));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self.inner.admin.create_topics([&new], &options).await.map_err(|error| {
            Error::with_source(ErrorKind::Backend, error).context(format!("create topic {topic}"))
        })?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(Error::new(ErrorKind::Backend, format!("create topic {topic}: {code}")));
                }
            }
        }
        self.wait_for_topic(topic, Duration::from_secs(30)).await
    }

    /// Deletes `topic` and everything in it.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self.inner.admin.delete_topics(&[topic], &options).await.map_err(|error| {
            Error::with_source(ErrorKind::Backend, error).context(format!("delete topic {topic}"))
        })?;
        self.inner.known.lock().remove(topic);
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, code)) => {
                    return Err(Error::new(ErrorKind::Backend, format!("delete topic {topic}: {code}")));
                }
            }
        }
        Ok(())
    }

    /// Whether the brokers' metadata has `topic` with at least one partition.
    async fn topic_exists(&self, topic: &str) -> Result<bool> {
        let producer = self.inner.producer.clone();
        let name = topic.to_owned();
        let metadata = tokio::task::spawn_blocking(move || {
            producer.inner.client().fetch_metadata(Some(&name), Duration::from_secs(10))
        })
        .await
        .map_err(|error| Error::msg(format!("kafka metadata task: {error}")))?
        .map_err(|error| {
            Error::with_source(ErrorKind::Backend, error).context(format!("metadata of {topic}"))
        })?;
        Ok(metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
    }

    async fn wait_for_topic(&self, topic: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.topic_exists(topic).await? {
                self.inner.known.lock().insert(topic.to_owned());
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("topic {topic} was created but is not in the brokers' metadata after {limit:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes sure `topic` exists where it must: created when [`KafkaConfig::create_topics`] says
    /// so; otherwise checked before subscribing (`must_exist`).
    async fn ensure_topic(&self, topic: &str, must_exist: bool) -> Result<()> {
        if self.inner.known.lock().contains(topic) {
            return Ok(());
        }
        match self.inner.config.create_topics {
            Some(spec) => self.create_topic(topic, spec.partitions, spec.replication).await,
            None if must_exist => {
                if self.topic_exists(topic).await? {
                    self.inner.known.lock().insert(topic.to_owned());
                    Ok(())
                } else {
                    Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "kafka: topic {topic} does not exist; create it (KafkaPubSub::create_topic) or \
                             let millstream create missing topics (KafkaConfig::create_topics)"
                        ),
                    ))
                }
            }
            None => Ok(()),
        }
    }

    fn check_publish(&self, topic: &str) -> Result<()> {
        if self.inner.publisher_closed.load(Ordering::SeqCst) {
            return Err(closed_error("kafka publisher closed"));
        }
        check_topic(topic)
    }
}

impl Publisher for KafkaPubSub {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        OpFuture::boxed(async move {
            self.check_publish(topic)?;
            self.ensure_topic(topic, false).await?;
            self.inner.producer.send(topic, message, None).await.map(|_| ())
        })
    }

    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> OpFuture<'a> {
        OpFuture::boxed(async move {
            self.check_publish(topic)?;
            self.ensure_topic(topic, false).await?;
            self.inner.producer.send_batch(topic, messages).await
        })
    }

    fn close(&self) -> OpFuture<'_> {
        OpFuture::boxed(async move {
            if self.inner.publisher_closed.swap(true, Ordering::SeqCst) {
                return Ok(());
            }
            let producer = self.inner.producer.clone();
            let limit = self.inner.config.publish_timeout;
            tokio::task::spawn_blocking(move || producer.flush(limit))
                .await
                .map_err(|error| Error::msg(format!("kafka flush task: {error}")))?
        })
    }
}

impl Subscriber for KafkaPubSub {
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription> {
        OpFuture::boxed(async move {
            if self.inner.subscriber_closed.load(Ordering::SeqCst) {
                return Err(closed_error("kafka subscriber closed"));
            }
            if options.pattern {
                return Err(Error::new(
                    ErrorKind::Config,
                    "kafka: pattern subscriptions are not supported; subscribe to each topic",
                ));
            }
            check_topic(topic)?;
            self.ensure_topic(topic, true).await?;
            let plan = consume::Plan {
                config: &self.inner.config,
                producer: self.inner.producer.clone(),
                cancel: self.inner.cancel.clone(),
                tasks: self.inner.tasks.clone(),
                closing: self.inner.closing.clone(),
            };
            consume::subscribe(plan, topic, &options).await
        })
    }

    fn close(&self) -> OpFuture<'_> {
        OpFuture::boxed(async move {
            self.inner.subscriber_closed.store(true, Ordering::SeqCst);
            self.inner.cancel.cancel();
            self.inner.tasks.close();
            // A consumer leaves its group and commits as it closes; with the broker gone that
            // may never end: it goes on in the background.
            let limit = self.inner.config.publish_timeout;
            if tokio::time::timeout(limit, self.inner.tasks.wait()).await.is_err() {
                tracing::warn!(?limit, "kafka: consumers still closing (is the broker reachable?); left to finish in the background");
            }
            Ok(())
        })
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> OpFuture<'a> {
        OpFuture::boxed(self.delete_topic(topic))
    }

    fn features(&self) -> Features {
        Features {
            backend: "kafka",
            consumer_groups: true,
            persistent: true,
            ordered: false,
            history: true,
            redelivery: true,
            ordered_single_subscriber: false,
            strict_order: false,
            exactly_once: false,
            nack_delay: true,
            max_payload: Some(self.inner.producer.max_payload()),
            settlement: Settlement::Cumulative,
            ordered_per_key: true,
            attempts: Attempts::AtLeast,
            dead_letter: false,
            release_uncounted: true,
            refuses_unroutable: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for good in ["orders", "conf.case.run.0", "a_b-c", &"x".repeat(249)] {
            assert!(check_topic(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(250)] {
            assert!(check_topic(bad).is_err(), "{bad}");
        }
    }
}
