//! What the backend declares on the server: the [`Topology`] hook, its three [`Preset`]s and the
//! [`Declarer`] they declare through.
//!
//! Declarations are idempotent (declaring what exists, the same way, changes nothing); one that
//! conflicts with what exists (another queue type, another dead-letter exchange) fails with a
//! permanent [`ErrorKind::Config`](crate::ErrorKind::Config) error naming the queue or exchange and the differing argument,
//! as the server reports it.

use std::fmt;
use std::time::Duration;

use futures_core::future::BoxFuture;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::error::{Error, ErrorKind, Result};
use crate::pubsub::{Features, SubscribeOptions};

/// Where a message is published: an exchange (`""` is the default exchange, which routes to
/// the queue named by the routing key) and a routing key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// The exchange.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
}

impl Route {
    /// A route.
    pub fn new(exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        Route { exchange: exchange.into(), routing_key: routing_key.into() }
    }
}

/// What a subscription consumes, as declared by [`Topology::declare_subscribe`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueuePlan {
    /// The queue to consume.
    pub queue: String,
    /// Where a rejected delivery goes (with its reason in the
    /// [`poison::REASON`](crate::keys::poison::REASON) header); `None`: it is rejected without
    /// requeueing and the queue's own `x-dead-letter-exchange`, if any, takes it.
    pub dead_letter: Option<Route>,
    /// Whether a delayed nack may use retry queues `<queue>.retry.<ms>ms` (declared on first
    /// use: the message waits there for its TTL, then is dead-lettered back into `queue`
    /// through the default exchange). Only for named queues that outlive a connection; without
    /// them the delay is waited in the process, holding the delivery.
    pub retry_queues: bool,
}

impl QueuePlan {
    /// A plan consuming `queue`, without dead letter or retry queues.
    pub fn new(queue: impl Into<String>) -> Self {
        QueuePlan { queue: queue.into(), dead_letter: None, retry_queues: false }
    }

    /// Sets [`QueuePlan::dead_letter`].
    pub fn dead_letter(mut self, route: Route) -> Self {
        self.dead_letter = Some(route);
        self
    }

    /// Sets [`QueuePlan::retry_queues`].
    pub fn retry_queues(mut self, yes: bool) -> Self {
        self.retry_queues = yes;
        self
    }
}

/// The topology hook: what is declared for publishing to a topic and for subscribing to one.
/// The [`Preset`]s cover the common shapes; implement it to use an existing topology (exchanges
/// made by another team, a headers exchange, a plugin's exchange type).
///
/// ```no_run
/// use millstream::pubsub::amqp::{
///     AmqpConfig, BoxFuture, Declarer, QueueKind, QueuePlan, QueueSpec, Route, Topology,
/// };
/// use millstream::SubscribeOptions;
///
/// /// Publishes to the `events` exchange another team declared; each group gets its own
/// /// quorum queue bound to it, without dead letters or retry queues.
/// #[derive(Debug)]
/// struct TheirExchange;
///
/// impl Topology for TheirExchange {
///     fn publish_route(&self, topic: &str) -> Route {
///         Route::new("events", topic)
///     }
///     fn declare_publish<'a>(&'a self, _: &'a Declarer, _: &'a str) -> BoxFuture<'a, millstream::Result<()>> {
///         Box::pin(async { Ok(()) }) // theirs: nothing to declare
///     }
///     fn declare_subscribe<'a>(
///         &'a self,
///         declarer: &'a Declarer,
///         topic: &'a str,
///         options: &'a SubscribeOptions,
///     ) -> BoxFuture<'a, millstream::Result<QueuePlan>> {
///         Box::pin(async move {
///             let group = options.group.as_deref().unwrap_or("default");
///             let queue = declarer.queue(&QueueSpec::durable(format!("{group}.{topic}"), QueueKind::Quorum)).await?;
///             declarer.bind(&queue, "events", topic).await?;
///             Ok(QueuePlan::new(queue))
///         })
///     }
/// }
///
/// let config = AmqpConfig::new("amqp://127.0.0.1").topology(TheirExchange);
/// ```
pub trait Topology: fmt::Debug + Send + Sync + 'static {
    /// Where a message to `topic` is published.
    fn publish_route(&self, topic: &str) -> Route;

    /// Declares what publishing to `topic` needs. Called once per topic and connection, before
    /// the first publish to it.
    fn declare_publish<'a>(&'a self, declarer: &'a Declarer, topic: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Declares the queue a subscription to `topic` consumes (and what it is bound to) and says
    /// how to consume it. Called on subscribe and again after every reconnection.
    fn declare_subscribe<'a>(
        &'a self,
        declarer: &'a Declarer,
        topic: &'a str,
        options: &'a SubscribeOptions,
    ) -> BoxFuture<'a, Result<QueuePlan>>;

    /// The backend's features under this topology: the default returns `features` unchanged
    /// (the preset for consumer groups).
    fn features(&self, features: Features) -> Features {
        features
    }
}

/// A queue to declare with [`Declarer::queue`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct QueueSpec {
    /// The name; empty for a server-named queue.
    pub name: String,
    /// Survives a server restart (with persistent messages, so do they).
    pub durable: bool,
    /// Only this connection may use it, and it goes with the connection.
    pub exclusive: bool,
    /// Deleted once its last consumer is gone.
    pub auto_delete: bool,
    /// Classic or quorum (`x-queue-type`).
    pub kind: QueueKind,
    /// `x-dead-letter-exchange` and `x-dead-letter-routing-key`.
    pub dead_letter: Option<Route>,
    /// `x-message-ttl`.
    pub message_ttl: Option<Duration>,
    /// Further arguments.
    pub arguments: FieldTable,
}

impl QueueSpec {
    /// A durable queue named `name`.
    pub fn durable(name: impl Into<String>, kind: QueueKind) -> Self {
        QueueSpec { name: name.into(), durable: true, kind, ..Self::default() }
    }

    /// A server-named, exclusive, auto-deleted classic queue (gone with the connection).
    pub fn private() -> Self {
        QueueSpec { exclusive: true, auto_delete: true, ..Self::default() }
    }

    /// Sets [`QueueSpec::dead_letter`].
    pub fn dead_letter(mut self, route: Route) -> Self {
        self.dead_letter = Some(route);
        self
    }

    /// Sets [`QueueSpec::message_ttl`].
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = Some(ttl);
        self
    }

    fn arguments(&self) -> FieldTable {
        let mut arguments = self.arguments.clone();
        if self.kind == QueueKind::Quorum {
            arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        }
        if let Some(route) = &self.dead_letter {
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(route.exchange.as_str().into()),
            );
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(route.routing_key.as_str().into()),
            );
        }
        if let Some(ttl) = self.message_ttl {
            let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(millis));
        }
        arguments
    }
}

/// Declares exchanges, queues and bindings on a channel of its own (a refused declaration closes
/// the channel it was made on, never a consuming or publishing one).
pub struct Declarer {
    channel: Channel,
}

impl fmt::Debug for Declarer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Declarer").field("channel", &self.channel.id()).finish()
    }
}

fn short(text: &str, what: &str) -> Result<ShortString> {
    ShortString::try_new(text).map_err(|_| {
        Error::new(
            ErrorKind::Config,
            format!("AMQP: {what} {text:?} is {} bytes, over AMQP's limit of 255", text.len()),
        )
        .into_permanent()
    })
}

/// A declaration error: a conflict (`PRECONDITION_FAILED`) becomes a permanent configuration
/// error naming `what`; anything else a backend error.
fn declare_error(what: &str, error: lapin::Error) -> Error {
    let text = error.to_string();
    if text.contains("PRECONDITION_FAILED") {
        Error::new(
            ErrorKind::Config,
            format!(
                "AMQP: {what} already exists with a different declaration ({text}); delete it or \
                 declare it the same way"
            ),
        )
        .into_permanent()
    } else {
        Error::backend(error).context(format!("AMQP: declaring {what}"))
    }
}

impl Declarer {
    pub(crate) async fn open(connection: &lapin::Connection) -> Result<Self> {
        let channel = connection.create_channel().await.map_err(Error::backend)?;
        Ok(Declarer { channel })
    }

    /// The channel, for declarations this type does not cover.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Declares a durable exchange of `kind`.
    pub async fn exchange(&self, name: &str, kind: ExchangeKind) -> Result<()> {
        let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
        self.channel
            .exchange_declare(short(name, "exchange name")?, kind, options, FieldTable::default())
            .await
            .map_err(|e| declare_error(&format!("exchange {name:?}"), e))
    }

    /// Declares a queue; returns its name (the server's choice for an unnamed one).
    pub async fn queue(&self, spec: &QueueSpec) -> Result<String> {
        let options = QueueDeclareOptions {
            durable: spec.durable,
            exclusive: spec.exclusive,
            auto_delete: spec.auto_delete,
            ..Default::default()
        };
        let queue = self
            .channel
            .queue_declare(short(&spec.name, "queue name")?, options, spec.arguments())
            .await
            .map_err(|e| declare_error(&format!("queue {:?}", spec.name), e))?;
        Ok(queue.name().as_str().to_owned())
    }

    /// Binds `queue` to `exchange` with `routing_key` (a pattern on a topic exchange).
    pub async fn bind(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<()> {
        self.channel
            .queue_bind(
                short(queue, "queue name")?,
                short(exchange, "exchange name")?,
                short(routing_key, "routing key")?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| declare_error(&format!("binding of queue {queue:?} to {exchange:?}"), e))
    }

    /// Declares the retry queue of `queue` for delay class `delay`: its messages wait `delay`,
    /// then go back into `queue` through the default exchange. Returns its name.
    pub(crate) async fn retry_queue(&self, queue: &str, delay: Duration) -> Result<String> {
        let name = retry_queue_name(queue, delay);
        let spec = QueueSpec::durable(name, QueueKind::Classic)
            .message_ttl(delay)
            .dead_letter(Route::new("", queue));
        self.queue(&spec).await
    }

    pub(crate) async fn close(self) {
        let close = self.channel.close(200, "declared".into());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), close).await;
    }
}

/// `<queue>.retry.<ms>ms`.
pub fn retry_queue_name(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}ms", delay.as_millis())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Groups,
    WorkQueue,
    FanOut,
}

/// The common topologies.
///
/// - [`groups`](Preset::groups) (the default, Watermill's pub/sub with consumer groups): one
///   durable topic exchange; a topic is a routing key; each consumer group has a durable queue
///   `<group>.<topic>` bound with the topic (a pattern of the topic exchange, `*` and `#`, with
///   [`SubscribeOptions::pattern`]); a subscription without a group gets a private queue, gone
///   with its connection. A message published while no queue is bound is unroutable (an error).
/// - [`work_queue`](Preset::work_queue): one durable queue per topic, named after it, published
///   to through the default exchange and declared by the publisher too, so messages wait for
///   consumers; every subscription shares it, whatever its group.
/// - [`fan_out`](Preset::fan_out): a durable fanout exchange per topic, named after it; groups
///   and private queues as with `groups`.
///
/// Each group queue has a dead-letter queue `<queue>.dlq`, bound to the direct exchange
/// `<exchange>.dlx` (the queue's `x-dead-letter-exchange`); private queues share
/// `<topic>.private.dlq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preset {
    shape: Shape,
    exchange: String,
    kind: QueueKind,
}

impl Preset {
    /// Consumer groups on the topic exchange `exchange`.
    pub fn groups(exchange: impl Into<String>) -> Self {
        Preset { shape: Shape::Groups, exchange: exchange.into(), kind: QueueKind::Classic }
    }

    /// One shared queue per topic (its dead letters go through `millstream.dlx`).
    pub fn work_queue() -> Self {
        Preset { shape: Shape::WorkQueue, exchange: "millstream".to_owned(), kind: QueueKind::Classic }
    }

    /// A fanout exchange per topic (dead letters through `millstream.dlx`).
    pub fn fan_out() -> Self {
        Preset { shape: Shape::FanOut, exchange: "millstream".to_owned(), kind: QueueKind::Classic }
    }

    /// Declares group (and work) queues as quorum queues: exact attempt counts.
    pub fn quorum(mut self) -> Self {
        self.kind = QueueKind::Quorum;
        self
    }

    /// Sets the kind of the group (and work) queues.
    pub fn queue_kind(mut self, kind: QueueKind) -> Self {
        self.kind = kind;
        self
    }

    /// The dead-letter exchange.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.exchange)
    }

    /// The queue of `group` on `topic` (or of `topic`, for a work queue).
    pub fn queue_name(&self, topic: &str, group: Option<&str>) -> String {
        match (self.shape, group) {
            (Shape::WorkQueue, _) | (_, None) => topic.to_owned(),
            (_, Some(group)) => format!("{group}.{topic}"),
        }
    }

    /// Declares `queue` durable, with its dead-letter queue; returns the plan.
    async fn durable_queue(&self, declarer: &Declarer, queue: &str) -> Result<QueuePlan> {
        let dlx = self.dead_letter_exchange();
        let dlq = format!("{queue}.dlq");
        let route = Route::new(&dlx, &dlq);
        declarer.exchange(&dlx, ExchangeKind::Direct).await?;
        declarer.queue(&QueueSpec::durable(&dlq, self.kind)).await?;
        declarer.bind(&dlq, &dlx, &dlq).await?;
        declarer.queue(&QueueSpec::durable(queue, self.kind).dead_letter(route.clone())).await?;
        Ok(QueuePlan::new(queue).dead_letter(route).retry_queues(true))
    }
}

impl Topology for Preset {
    fn publish_route(&self, topic: &str) -> Route {
        match self.shape {
            Shape::Groups => Route::new(&self.exchange, topic),
            Shape::WorkQueue => Route::new("", topic),
            Shape::FanOut => Route::new(topic, ""),
        }
    }

    fn declare_publish<'a>(&'a self, declarer: &'a Declarer, topic: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match self.shape {
                Shape::Groups => declarer.exchange(&self.exchange, ExchangeKind::Topic).await,
                Shape::WorkQueue => self.durable_queue(declarer, topic).await.map(drop),
                Shape::FanOut => declarer.exchange(topic, ExchangeKind::Fanout).await,
            }
        })
    }

    fn declare_subscribe<'a>(
        &'a self,
        declarer: &'a Declarer,
        topic: &'a str,
        options: &'a SubscribeOptions,
    ) -> BoxFuture<'a, Result<QueuePlan>> {
        Box::pin(async move {
            let (exchange, binding) = match self.shape {
                Shape::WorkQueue => return self.durable_queue(declarer, topic).await,
                Shape::Groups => {
                    declarer.exchange(&self.exchange, ExchangeKind::Topic).await?;
                    (self.exchange.as_str(), topic)
                }
                Shape::FanOut => {
                    declarer.exchange(topic, ExchangeKind::Fanout).await?;
                    (topic, "")
                }
            };
            let plan = match options.group.as_deref() {
                Some(group) => self.durable_queue(declarer, &self.queue_name(topic, Some(group))).await?,
                None => {
                    let dlx = self.dead_letter_exchange();
                    let dlq = format!("{topic}.private.dlq");
                    let route = Route::new(&dlx, &dlq);
                    declarer.exchange(&dlx, ExchangeKind::Direct).await?;
                    declarer.queue(&QueueSpec::durable(&dlq, QueueKind::Classic)).await?;
                    declarer.bind(&dlq, &dlx, &dlq).await?;
                    let queue = declarer.queue(&QueueSpec::private().dead_letter(route.clone())).await?;
                    QueuePlan::new(queue).dead_letter(route)
                }
            };
            declarer.bind(&plan.queue, exchange, binding).await?;
            Ok(plan)
        })
    }

    fn features(&self, mut features: Features) -> Features {
        if self.kind == QueueKind::Quorum {
            features.attempts = crate::pubsub::Attempts::Exact;
        }
        if self.shape == Shape::WorkQueue {
            // The publisher declares the queue: messages wait for their first consumer.
            features.history = true;
            features.refuses_unroutable = false;
        }
        features
    }
}

/// The kind of queue the presets declare for consumer groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum QueueKind {
    /// A classic queue: a redelivery is only flagged `redelivered`, so attempts are counted as
    /// [`Attempts::AtLeast`](crate::pubsub::Attempts::AtLeast).
    #[default]
    Classic,
    /// A quorum queue (replicated, `x-queue-type: quorum`): the broker counts deliveries
    /// (`x-delivery-count`), so attempts are [`Attempts::Exact`](crate::pubsub::Attempts::Exact).
    Quorum,
}
