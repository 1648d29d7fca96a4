//! [`Route`]: one handler with its topic, group, publish topic, concurrency and middleware.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::Arc;

use futures_core::future::BoxFuture;

use crate::batch::{batch_output_spec, BatchHandler, BatchOutcome, BatchReturn};
use crate::codec::{Codec, DynEncoder, JsonCodec};
use crate::context::{MessageCx, RouteInfo};
use crate::error::{Error, ErrorKind};
use crate::handler::{output_delays, output_spec, Handler, HandlerResult, OutputSpec};
use crate::message::Message;
use crate::middleware::{call_slot, CallSlot, Chain, Endpoint, Middleware};
use crate::pubsub::{Publisher, Subscriber};
use crate::state::StateMap;

type BuildFn = Box<dyn FnOnce(&StateMap) -> Result<Arc<dyn Endpoint>, Vec<Error>> + Send>;

/// A handler and how it is wired: the topic it reads, its consumer group, where its return values
/// go, how many messages it handles at once, and its own middleware.
///
/// ```
/// use millstream::Route;
/// # #[derive(serde::Deserialize)] struct Order { id: u64 }
/// # #[derive(serde::Serialize)] struct Invoice { order: u64 }
/// # impl millstream::Publishable for Invoice {}
/// async fn bill(order: Order) -> millstream::Result<Invoice> {
///     Ok(Invoice { order: order.id })
/// }
///
/// let route = Route::new("bill", "orders", bill).publish("invoices").concurrency(4);
/// # let _ = route;
/// ```
pub struct Route {
    pub(crate) name: String,
    pub(crate) topic: String,
    pub(crate) group: Option<String>,
    pub(crate) publish: Option<String>,
    pub(crate) concurrency: NonZeroUsize,
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
    pub(crate) publisher: Option<Arc<dyn Publisher>>,
    pub(crate) subscriber: Option<Arc<dyn Subscriber>>,
    pub(crate) output: OutputSpec,
    /// The handler returns [`Delayed`](crate::Delayed) values: its publisher must delay.
    pub(crate) delayed_output: bool,
    pub(crate) encoder: Arc<dyn DynEncoder>,
    pub(crate) build: BuildFn,
    /// Runs the extractors' `prepare` against some state, without building anything.
    pub(crate) check_state: fn(&StateMap) -> Result<(), Vec<Error>>,
    /// Where the handler was declared, for a `#[millstream::handler]` fn.
    pub(crate) location: Option<Location>,
    /// Deliveries with the same key stay in order with `concurrency > 1`.
    pub(crate) order_by_key: bool,
    /// Retry topics, one per delay ([`Route::retry_topics`]).
    pub(crate) retry_delays: Vec<std::time::Duration>,
    /// Where failures end ([`Route::dead_letter`]).
    pub(crate) dead_letter: Option<String>,
    /// Its own publisher and subscriber are one backend (set by the app for a named pub/sub).
    pub(crate) paired: bool,
    /// How many of the handler's arguments run its calls in a unit of work ([`Tx`](crate::inbox::Tx)):
    /// with one, the worker commits the unit with the outputs instead of publishing them.
    pub(crate) units: usize,
    /// A batch handler's batch size and linger ([`Route::batch`]).
    pub(crate) batch: Option<BatchSpec>,
    /// A batch size or linger was set on a handler that is not a batch handler.
    pub(crate) batch_misused: bool,
}

/// How a batch handler's batches are gathered: at most `size` messages, waiting at most `linger`
/// after the first for the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchSpec {
    pub(crate) size: NonZeroUsize,
    pub(crate) linger: std::time::Duration,
}

/// A batch's size unless set ([`Route::batch_size`]).
pub const DEFAULT_BATCH_SIZE: usize = 100;

/// How long a batch waits for more messages after its first unless set ([`Route::linger`]).
pub const DEFAULT_LINGER: std::time::Duration = std::time::Duration::from_millis(50);

/// A source location, displayed as `file:line`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file, as `file!()` gives it.
    pub file: &'static str,
    /// The line.
    pub line: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// What a router runs for one handler, as [`Router::handlers`](super::Router::handlers) lists it:
/// every setting with its effective value (the default group is the handler's name).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerSummary {
    /// The handler's name.
    pub name: String,
    /// The topic it reads.
    pub topic: String,
    /// The consumer group it reads in.
    pub group: String,
    /// Where its return values go: its publish topic, or the own topic of its return type.
    pub publish: Option<String>,
    /// How many messages it handles at once.
    pub concurrency: usize,
    /// Where it was declared, for a `#[millstream::handler]` fn; `None` for a hand-made [`Route`].
    pub location: Option<Location>,
}

impl fmt::Display for HandlerSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` reads `{}` in group `{}`", self.name, self.topic, self.group)?;
        if let Some(publish) = &self.publish {
            write!(f, ", publishes to `{publish}`")?;
        }
        if self.concurrency > 1 {
            write!(f, ", {} at once", self.concurrency)?;
        }
        match self.location {
            Some(location) => write!(f, " ({location})"),
            None => f.write_str(" (a hand-made `Route`)"),
        }
    }
}

impl Route {
    /// A handler named `name` reading `topic`, decoding and encoding JSON.
    pub fn new<H, M>(name: impl Into<String>, topic: impl Into<String>, handler: H) -> Self
    where
        H: Handler<M>,
        M: 'static,
    {
        Self::with_codec(name, topic, handler, JsonCodec)
    }

    /// A handler with a codec of its own.
    pub fn with_codec<H, M, C>(
        name: impl Into<String>,
        topic: impl Into<String>,
        handler: H,
        codec: C,
    ) -> Self
    where
        H: Handler<M>,
        M: 'static,
        C: Codec + Clone,
    {
        let encoder: Arc<dyn DynEncoder> = Arc::new(codec.clone());
        let build: BuildFn = Box::new(move |state| {
            let prepared = H::prepare(state)?;
            let typed = TypedEndpoint { handler, prepared, codec, marker: PhantomData::<fn() -> M> };
            let endpoint: Arc<dyn Endpoint> = match H::UNIT_OF_WORK {
                None => Arc::new(typed),
                Some(open) => Arc::new(UnitEndpoint { typed, unit: open(state).map_err(|e| vec![e])? }),
            };
            Ok(endpoint)
        });
        let mut route = Route::base(name.into(), topic.into(), encoder, output_spec::<H::Return>(), build);
        route.delayed_output = output_delays::<H::Return>();
        route.check_state = |state| H::prepare(state).map(drop);
        route.units = H::UNITS;
        route
    }

    /// A batch handler named `name` reading `topic` ([`BatchHandler`]): it gets up to
    /// [`batch_size`](Route::batch_size) messages at once (default [`DEFAULT_BATCH_SIZE`]),
    /// gathered for at most [`linger`](Route::linger) after the first (default
    /// [`DEFAULT_LINGER`]), decoded as JSON.
    ///
    /// ```
    /// use millstream::{BatchResult, Route};
    /// # #[derive(serde::Deserialize)] struct Reading { value: f64 }
    /// async fn store(readings: Vec<Reading>) -> BatchResult {
    ///     BatchResult::ok()
    /// }
    /// let route = Route::batch("store", "readings", store).batch_size(500);
    /// # let _ = route;
    /// ```
    ///
    /// Messages are acked one by one once the batch is handled and its outputs published (a
    /// backend that settles cumulatively, as Kafka, commits through its watermark). A batch
    /// handler's route takes no middleware (middleware wraps one message at a time) and handles one
    /// batch at a time; app-wide layers do not wrap it either. On a backend that hands out a
    /// group's next message only once the previous is settled
    /// ([`Features::strict_order`](crate::pubsub::Features::strict_order): the SQL backend), every
    /// batch holds one message (with SQL partitions, at most one per partition).
    pub fn batch<H, M>(name: impl Into<String>, topic: impl Into<String>, handler: H) -> Self
    where
        H: BatchHandler<M>,
        M: 'static,
    {
        Self::batch_with_codec(name, topic, handler, JsonCodec)
    }

    /// A batch handler with a codec of its own.
    pub fn batch_with_codec<H, M, C>(
        name: impl Into<String>,
        topic: impl Into<String>,
        handler: H,
        codec: C,
    ) -> Self
    where
        H: BatchHandler<M>,
        M: 'static,
        C: Codec + Clone,
    {
        let encoder: Arc<dyn DynEncoder> = Arc::new(codec.clone());
        let build: BuildFn = Box::new(move |state| {
            let prepared = H::prepare(state)?;
            let endpoint: Arc<dyn Endpoint> =
                Arc::new(BatchEndpoint { handler, prepared, codec, marker: PhantomData::<fn() -> M> });
            Ok(endpoint)
        });
        let mut route =
            Route::base(name.into(), topic.into(), encoder, batch_output_spec::<H::Return>(), build);
        route.delayed_output = <<H::Return as BatchReturn>::Ok as crate::handler::IntoOutputs>::DELAYS;
        route.check_state = |state| H::prepare(state).map(drop);
        route.batch = Some(BatchSpec {
            size: NonZeroUsize::new(DEFAULT_BATCH_SIZE).expect("not zero"),
            linger: DEFAULT_LINGER,
        });
        route
    }

    /// A route with every setting at its default, building its endpoint with `build`.
    fn base(
        name: String,
        topic: String,
        encoder: Arc<dyn DynEncoder>,
        output: OutputSpec,
        build: BuildFn,
    ) -> Route {
        Route {
            name,
            topic,
            group: None,
            publish: None,
            concurrency: NonZeroUsize::MIN,
            middleware: Vec::new(),
            publisher: None,
            subscriber: None,
            output,
            delayed_output: false,
            encoder,
            build,
            check_state: |_| Ok(()),
            location: None,
            order_by_key: false,
            retry_delays: Vec::new(),
            dead_letter: None,
            paired: false,
            units: 0,
            batch: None,
            batch_misused: false,
        }
    }

    /// A batch handler's largest batch (at least 1; default [`DEFAULT_BATCH_SIZE`]). Ignored by
    /// other handlers (the app refuses to build one that sets it).
    pub fn batch_size(mut self, size: usize) -> Self {
        match &mut self.batch {
            Some(batch) => batch.size = NonZeroUsize::new(size).unwrap_or(NonZeroUsize::MIN),
            None => self.batch_misused = true,
        }
        self
    }

    /// How long a batch handler's batch waits for more messages after its first (default
    /// [`DEFAULT_LINGER`]; zero: only what is ready at once).
    pub fn linger(mut self, linger: std::time::Duration) -> Self {
        match &mut self.batch {
            Some(batch) => batch.linger = linger,
            None => self.batch_misused = true,
        }
        self
    }

    /// Publishes the handler's return values (and what it sends with
    /// [`Ctx::publish`](crate::Ctx::publish)) that have no topic of their own to `topic`.
    ///
    /// A value of a [`Topic`](crate::Topic) type always goes to its own topic: a handler whose
    /// return type has one cannot name another here (the app refuses to build); return
    /// [`Json<T>`](crate::Json) to send such a value elsewhere.
    pub fn publish(mut self, topic: impl Into<String>) -> Self {
        self.publish = Some(topic.into());
        self
    }

    /// The consumer group. Default: the handler's name, so that instances of one service share
    /// the work while different handlers each get every message.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// How many messages are handled at once. Default 1: one at a time, in order.
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = NonZeroUsize::new(n).expect("concurrency must be at least 1");
        self
    }

    /// With [`concurrency`](Route::concurrency) above 1, keeps messages with the same
    /// [key](crate::Message::with_key) in order: each key is handled by one lane, one message at a
    /// time, in the order the backend delivered them; messages without a key go to any lane. The
    /// backend must deliver in order (checked when the handler is added). With several instances
    /// in one group, the order per key holds only where the backend keeps a key on one consumer
    /// ([`Features::ordered_per_key`](crate::pubsub::Features::ordered_per_key)).
    pub fn order_by_key(mut self) -> Self {
        self.order_by_key = true;
        self
    }

    /// Adds a middleware for this handler only; it runs inside the app-wide ones, and layers
    /// added first are called first (outermost).
    pub fn layer(mut self, layer: impl Middleware) -> Self {
        self.middleware.push(Arc::new(layer));
        self
    }

    /// **Non-blocking retry topics** (Spring Kafka's `@RetryableTopic`): a message whose handling
    /// fails with a transient error is acked and published to the first retry topic,
    /// `{topic}.retry.{delay}` (`orders.retry.1s`), which the handler also reads, in its group,
    /// waiting until the message is `delay` old there; a failure there goes to the next retry
    /// topic, and after the last to the [`dead_letter`](Route::dead_letter) topic (default: the
    /// router's poison topic), with the reason. So a failing message never holds up the messages
    /// behind it, on any backend, and its retries survive restarts as the broker keeps them.
    ///
    /// The handler sees the true attempt (1 on the topic, 2 on the first retry topic, ...) and
    /// the original message id; the key and metadata are kept. **Order**: a retried message comes
    /// after the messages that followed it; handlers that need strict order per key should not
    /// use retry topics. A permanent failure (a payload that does not decode,
    /// [`Error::permanent`](crate::Error::permanent)) goes to the dead letter at once. Requeueing
    /// through a delay store ([`RouterConfig::requeue_after`](super::RouterConfig::requeue_after))
    /// does not apply to such a handler.
    ///
    /// Each retry topic runs as a handler of its own, named `{name}.retry.{delay}`; delays are
    /// named by their largest whole unit (`500ms`, `10s`, `1m`, `2h`). In an app with a delay
    /// store ([`App::delays`](crate::App::delays)) a retry travels through the store and arrives
    /// when due; without one, the retry topic's handler holds the delivery until it is due, so
    /// delays above [`MAX_RETRY_WAIT`](super::MAX_RETRY_WAIT) (15 s) are refused. The handler
    /// must read and publish on one backend.
    pub fn retry_topics(mut self, delays: impl IntoIterator<Item = std::time::Duration>) -> Self {
        self.retry_delays = delays.into_iter().collect();
        self
    }

    /// Where this handler's messages go when they fail for good: after the last retry topic, or
    /// at once for a permanent failure (default: the router's
    /// [`poison_topic`](super::RouterConfig::poison_topic)), with the reason in their metadata.
    pub fn dead_letter(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter = Some(topic.into());
        self
    }

    /// Reads from this subscriber instead of the router's.
    pub fn subscriber(mut self, subscriber: Arc<dyn Subscriber>) -> Self {
        self.subscriber = Some(subscriber);
        self
    }

    /// Publishes through this publisher instead of the router's.
    pub fn publisher(mut self, publisher: Arc<dyn Publisher>) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// The handler's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic it reads.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Where its values go, as declared by its return type.
    pub fn output(&self) -> OutputSpec {
        self.output
    }

    /// The consumer group it will subscribe with.
    pub fn effective_group(&self) -> &str {
        self.group.as_deref().unwrap_or(&self.name)
    }

    /// The topic its return values go to, if it returns any: its return type's own topic, or
    /// its publish topic.
    pub fn publish_topic(&self) -> Option<Cow<'_, str>> {
        match (self.output, &self.publish) {
            (OutputSpec::Topic(topic), _) => Some(Cow::Borrowed(topic)),
            (_, Some(topic)) => Some(Cow::Borrowed(topic)),
            _ => None,
        }
    }

    /// Where the handler was declared, for a `#[millstream::handler]` fn.
    pub fn location(&self) -> Option<Location> {
        self.location
    }

    /// Records where a `#[millstream::handler]` fn was declared.
    pub(crate) fn declared_at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    /// The route as [`Router::handlers`](super::Router::handlers) lists it.
    pub fn summary(&self) -> HandlerSummary {
        HandlerSummary {
            name: self.name.clone(),
            topic: self.topic.clone(),
            group: self.effective_group().to_owned(),
            publish: self.publish_topic().map(Cow::into_owned),
            concurrency: self.concurrency.get(),
            location: self.location,
        }
    }

    /// `handler `name`` and where it was declared, for messages.
    pub(crate) fn origin(&self) -> String {
        match self.location {
            Some(location) => format!("handler `{}` ({location})", self.name),
            None => format!("handler `{}` (a `Route` added with `.route(..)`)", self.name),
        }
    }

    /// The problems the handler's extractors would report with `state` (a `State<T>` never
    /// provided, ...), found without starting it.
    pub fn check_state(&self, state: &StateMap) -> Vec<Error> {
        (self.check_state)(state).err().unwrap_or_default()
    }

    /// Problems visible without running anything.
    pub(crate) fn check(&self) -> Vec<Error> {
        let mut problems = Vec::new();
        if self.name.is_empty() {
            problems.push(config_error(format!("a handler on topic `{}` has an empty name", self.topic)));
        }
        if self.topic.is_empty() {
            problems.push(config_error(format!("handler `{}` has an empty topic", self.name)));
        }
        match (self.output, &self.publish) {
            (OutputSpec::PublishTopic, None) => problems.push(config_error(format!(
                "handler `{}` returns values to publish but has no publish topic; set one with `.publish(\"topic\")`",
                self.name
            ))),
            (OutputSpec::Nothing, Some(topic)) => problems.push(config_error(format!(
                "handler `{}` has publish topic `{topic}` but returns nothing to publish",
                self.name
            ))),
            (OutputSpec::Topic(own), Some(topic)) if own != topic => problems.push(config_error(format!(
                "handler `{}` has publish topic `{topic}`, but it returns values of a `#[topic]` type, which always go to their own topic `{own}`; remove the publish topic, or return `Json<_>` to publish elsewhere",
                self.name
            ))),
            _ => {}
        }
        if self.batch_misused {
            problems.push(config_error(format!(
                "handler `{}` sets a batch size or linger but is not a batch handler; declare it with `Route::batch`",
                self.name
            )));
        }
        if self.batch.is_some() {
            let name = &self.name;
            if self.order_by_key {
                problems.push(config_error(format!(
                    "batch handler `{name}` orders by key: a batch is handled as one, and a message failed in it \
                     comes back after others of its key"
                )));
            }
            if !self.middleware.is_empty() {
                problems.push(config_error(format!(
                    "batch handler `{name}` has middleware of its own: middleware wraps one message at a time"
                )));
            }
            if self.concurrency.get() > 1 {
                problems.push(config_error(format!(
                    "batch handler `{name}` has concurrency {}: a batch handler handles one batch at a time; \
                     make batches larger instead",
                    self.concurrency
                )));
            }
            if !self.retry_delays.is_empty() || self.dead_letter.is_some() {
                problems.push(config_error(format!(
                    "batch handler `{name}` has retry topics or a dead letter topic: not available to batch handlers"
                )));
            }
        }
        if self.units > 1 {
            problems.push(config_error(format!(
                "handler `{}` takes {} transactions (`Tx`); a handler runs in one: take one `Tx`",
                self.name, self.units
            )));
        }
        if self.units > 0 && self.delayed_output {
            problems.push(config_error(format!(
                "handler `{}` takes a transaction (`Tx`) and returns `Delayed` values: what a transactional \
                 handler returns is written to its database's outbox when it commits, which cannot delay it; \
                 schedule the value from a handler without `Tx`",
                self.name
            )));
        }
        let mut labels = std::collections::BTreeSet::new();
        for delay in &self.retry_delays {
            if delay.is_zero() {
                problems.push(config_error(format!("handler `{}` has a retry topic of no delay", self.name)));
            } else if !labels.insert(super::retry::delay_label(*delay)) {
                problems.push(config_error(format!(
                    "handler `{}` has two retry topics of {}",
                    self.name,
                    super::retry::delay_label(*delay)
                )));
            }
        }
        problems
    }
}

pub(crate) fn config_error(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("topic", &self.topic)
            .field("group", &self.effective_group())
            .field("publish", &self.publish_topic())
            .field("location", &self.location)
            .field("concurrency", &self.concurrency)
            .field("order_by_key", &self.order_by_key)
            .field("middleware", &self.middleware.len())
            .finish()
    }
}

struct TypedEndpoint<H: Handler<M>, M, C> {
    handler: H,
    prepared: H::Prepared,
    codec: C,
    marker: PhantomData<fn() -> M>,
}

impl<H, M, C> Endpoint for TypedEndpoint<H, M, C>
where
    H: Handler<M>,
    M: 'static,
    C: Codec,
{
    #[inline]
    fn call<'a>(&'a self, message: Message, cx: MessageCx<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(self.handler.call(&self.prepared, &self.codec, message, cx))
    }

    fn call_slot<'a>(&'a self, route: &'a Arc<RouteInfo>) -> Option<Box<dyn CallSlot<'a> + 'a>> {
        Some(call_slot(move |message, attempt| {
            self.handler.call(&self.prepared, &self.codec, message, MessageCx { route, attempt })
        }))
    }

    fn call_owned(
        self: Arc<Self>,
        chain: Arc<Chain>,
        message: Message,
        attempt: u32,
    ) -> BoxFuture<'static, HandlerResult> {
        Box::pin(async move {
            let cx = MessageCx { route: &chain.route, attempt };
            self.handler.call(&self.prepared, &self.codec, message, cx).await
        })
    }
}

/// A batch handler: called with a batch by the router ([`Endpoint::call_batch`]); called with
/// one message (a [`Router::service`](crate::Router::service) caller), with a batch of one.
struct BatchEndpoint<H: BatchHandler<M>, M, C> {
    handler: H,
    prepared: H::Prepared,
    codec: C,
    marker: PhantomData<fn() -> M>,
}

impl<H, M, C> BatchEndpoint<H, M, C>
where
    H: BatchHandler<M>,
    M: 'static,
    C: Codec,
{
    async fn one(&self, message: Message) -> HandlerResult {
        let outcome = self.handler.call(&self.prepared, &self.codec, vec![message]).await?;
        match outcome.failures.into_iter().next() {
            Some((_, error)) => Err(error),
            None => Ok(outcome.outputs),
        }
    }
}

impl<H, M, C> Endpoint for BatchEndpoint<H, M, C>
where
    H: BatchHandler<M>,
    M: 'static,
    C: Codec,
{
    fn call<'a>(&'a self, message: Message, _cx: MessageCx<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(self.one(message))
    }

    fn call_owned(
        self: Arc<Self>,
        _chain: Arc<Chain>,
        message: Message,
        _attempt: u32,
    ) -> BoxFuture<'static, HandlerResult> {
        Box::pin(async move { self.one(message).await })
    }

    fn call_batch<'a>(
        &'a self,
        messages: Vec<Message>,
        _cx: MessageCx<'a>,
    ) -> BoxFuture<'a, crate::error::Result<BatchOutcome>> {
        Box::pin(self.handler.call(&self.prepared, &self.codec, messages))
    }
}

/// A handler whose calls run in a unit of work (it takes a [`Tx`](crate::inbox::Tx)): the unit
/// is begun before the call (a message handled before is acked without running the handler),
/// lent to the handler's argument, and, when the handler succeeds, left to the worker, which
/// commits it with the outputs the chain lets through. Called outside a router, it commits the
/// unit itself, with the handler's own outputs.
struct UnitEndpoint<H: Handler<M>, M, C> {
    typed: TypedEndpoint<H, M, C>,
    unit: Arc<dyn crate::unit::UnitOfWork>,
}

impl<H, M, C> UnitEndpoint<H, M, C>
where
    H: Handler<M>,
    M: 'static,
    C: Codec,
{
    async fn run(&self, message: Message, cx: MessageCx<'_>) -> HandlerResult {
        // A middleware that calls the handler again (a retry): the earlier call's unit, left for
        // the worker, is rolled back first, or it would hold the inbox key this call takes.
        crate::unit::drop_pending();
        let Some(work) = self.unit.begin(&message, cx).await? else {
            tracing::debug!(handler = %cx.route.name, message_id = %message.id(), "handled before (its transaction committed); acked without running the handler");
            crate::unit::leave_handled_before();
            return Ok(crate::handler::Outputs::new());
        };
        let call = self.typed.handler.call(&self.typed.prepared, &self.typed.codec, message, cx);
        let outputs = crate::unit::with_current(work.clone(), call).await?;
        let Some((unit, work)) = crate::unit::leave_pending((self.unit.clone(), work)) else {
            return Ok(outputs);
        };
        let mut resolved = Vec::with_capacity(outputs.len());
        for output in outputs {
            let topic = cx.route.output_topic(output.topic)?.into_owned();
            resolved.push((Cow::Owned(topic), output.message));
        }
        unit.commit(work, resolved).await?;
        Ok(crate::handler::Outputs::new())
    }
}

impl<H, M, C> Endpoint for UnitEndpoint<H, M, C>
where
    H: Handler<M>,
    M: 'static,
    C: Codec,
{
    fn call<'a>(&'a self, message: Message, cx: MessageCx<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(self.run(message, cx))
    }

    fn call_owned(
        self: Arc<Self>,
        chain: Arc<Chain>,
        message: Message,
        attempt: u32,
    ) -> BoxFuture<'static, HandlerResult> {
        Box::pin(async move {
            let cx = MessageCx { route: &chain.route, attempt };
            self.run(message, cx).await
        })
    }
}
