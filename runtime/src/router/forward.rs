//! [`Forwarder`]: relays the messages of topics on one backend to another, unchanged and in
//! order: the outbox's second half.

use std::sync::Arc;
use std::time::Duration;

use super::route::Route;
use crate::message::Message;
use crate::op::OpFuture;
use crate::pubsub::{Publisher, Subscriber};

/// The consumer group forwarders read with unless [`Forwarder::group`] names another.
pub const FORWARDER_GROUP: &str = "millstream.forwarder";

/// Relays messages from topics of one backend (usually the SQL backend, where
/// [`SqlPubSub::publish_in`](crate::pubsub::sql::SqlPubSub::publish_in) wrote them inside the
/// transactions of your own writes: the outbox) to another backend (Kafka, NATS, RabbitMQ, ...),
/// unchanged: the same id, metadata, key and payload.
///
/// It makes one [`Route`] per topic, added to an app with [`App::forward`](crate::App::forward),
/// so it runs, shuts down, reports health and exposes metrics as handlers do:
///
#[cfg_attr(all(feature = "nats", feature = "postgres"), doc = "```no_run")]
#[cfg_attr(not(all(feature = "nats", feature = "postgres")), doc = "```ignore")]
/// # use std::sync::Arc;
/// # use millstream::{App, NatsConfig, NatsPubSub, SqlConfig, SqlPubSub};
/// # use millstream::router::Forwarder;
/// # async fn f() -> millstream::Result<()> {
/// let outbox = SqlPubSub::connect("postgres://app@db/app", SqlConfig::default()).await?;
/// let nats = NatsPubSub::connect("nats://127.0.0.1:4222", NatsConfig::default()).await?;
/// App::new()
///     .pubsub(nats.clone())
///     .forward(Forwarder::new(Arc::new(outbox), Arc::new(nats)).topics(["orders", "payments"]))
///     .run_until_ctrl_c()
///     .await
/// # }
/// ```
///
/// # Guarantees
/// - **Exactly the committed messages**: it reads what the source delivers; the SQL backend
///   delivers a message written with `publish_in` only once its transaction committed, and never
///   one whose transaction rolled back.
/// - **In order**: each topic is read by one route, one message at a time, acked only after it is
///   published; a publish that fails is retried (the delivery is nacked with a delay of
///   [`retry_delay`](Self::retry_delay), 1 s, and the SQL backend hands the same message back
///   first), never skipped and never reordered (a failed publish is never requeued through a
///   delay store). A message the target refuses for good (too large for it) goes to the app's
///   poison topic on the target, with the reason.
/// - **One active instance per topic**: every forwarder reads in the consumer group
///   [`FORWARDER_GROUP`] (or [`group`](Self::group)); the SQL backend gives a group's messages to
///   one lease holder at a time, so several processes may run forwarders, one relays each topic
///   and another takes over when it dies (after the SQL backend's ack deadline).
/// - **Not twice, where the target can tell**: a forwarder that dies between publishing and
///   acking publishes that message again after its restart, with the **same message id**. NATS
///   JetStream drops it (the id is its `Nats-Msg-Id`, within its duplicate window); on other
///   targets a [`Deduplicator`](crate::middleware::Deduplicator) keyed by message id drops it at
///   the consumer.
#[derive(Clone)]
pub struct Forwarder {
    from: Arc<dyn Subscriber>,
    to: Arc<dyn Publisher>,
    topics: Vec<(String, String)>,
    group: String,
    retry_delay: Duration,
}

impl Forwarder {
    /// A forwarder reading from `from` and publishing to `to`, with no topics yet.
    pub fn new(from: Arc<dyn Subscriber>, to: Arc<dyn Publisher>) -> Self {
        Forwarder {
            from,
            to,
            topics: Vec::new(),
            group: FORWARDER_GROUP.to_owned(),
            retry_delay: Duration::from_secs(1),
        }
    }

    /// Relays `topic` to the topic of the same name.
    pub fn topic(self, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        self.topic_to(topic.clone(), topic)
    }

    /// Relays each of `topics` to the topic of the same name.
    pub fn topics<I>(self, topics: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        topics.into_iter().fold(self, Forwarder::topic)
    }

    /// Relays `from` to the topic `to` of the target.
    pub fn topic_to(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.topics.push((from.into(), to.into()));
        self
    }

    /// The consumer group to read in (default [`FORWARDER_GROUP`]): forwarders in one group share
    /// the work, one per topic at a time.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// How long to wait before publishing again after a failed publish (default 1 s).
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// The routes, one per topic, named `forward:{topic}`: what
    /// [`App::forward`](crate::App::forward) adds.
    pub fn routes(&self) -> Vec<Route> {
        let publisher: Arc<dyn Publisher> =
            Arc::new(Retrying { inner: self.to.clone(), delay: self.retry_delay });
        self.topics
            .iter()
            .map(|(from, to)| {
                Route::new(format!("forward:{from}"), from.clone(), pass_on)
                    .publish(to.clone())
                    .group(self.group.clone())
                    .subscriber(self.from.clone())
                    .publisher(publisher.clone())
            })
            .collect()
    }
}

/// The forwarders' handler: the message, unchanged (without where it came from).
async fn pass_on(message: Message) -> Message {
    let (id, metadata, payload) = message.into_parts();
    Message::from_parts(id, metadata, payload)
}

/// The target publisher, with a retry delay on its transient errors: the router nacks a delivery
/// whose outputs failed to publish with the error's delay.
struct Retrying {
    inner: Arc<dyn Publisher>,
    delay: Duration,
}

impl Retrying {
    fn hint(&self, result: crate::error::Result<()>) -> crate::error::Result<()> {
        result.map_err(|error| if error.is_permanent() { error } else { error.retry_after(self.delay) })
    }
}

impl Publisher for Retrying {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        OpFuture::boxed(async move { self.hint(self.inner.publish(topic, message).await) })
    }

    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> OpFuture<'a> {
        OpFuture::boxed(async move { self.hint(self.inner.publish_batch(topic, messages).await) })
    }

    fn close(&self) -> OpFuture<'_> {
        self.inner.close()
    }

    fn delays(&self) -> bool {
        self.inner.delays()
    }
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("topics", &self.topics)
            .field("group", &self.group)
            .field("retry_delay", &self.retry_delay)
            .finish_non_exhaustive()
    }
}
