//! Middleware: code that wraps every handler call, router-wide or per handler.
//!
//! A middleware receives the message and [`Next`], the rest of the chain; it may change the message,
//! call `next.run(message)` (or not, or several times), and inspect or change the outputs. Layers
//! added first are called first (outermost). [`from_fn`] turns an async fn into a middleware:
//!
//! ```
//! use millstream::middleware::{from_fn, Next};
//! use millstream::{HandlerResult, Message};
//!
//! async fn timing(message: Message, next: Next) -> HandlerResult {
//!     let started = std::time::Instant::now();
//!     let result = next.run(message).await;
//!     tracing::debug!(elapsed = ?started.elapsed(), "handled");
//!     result
//! }
//!
//! let layer = from_fn(timing);
//! # let _ = layer;
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_core::future::BoxFuture;

use crate::context::{MessageCx, RouteInfo};
use crate::handler::HandlerResult;
use crate::message::Message;

/// A layer around handler calls. See the [module docs](self).
pub trait Middleware: Send + Sync + 'static {
    /// Handles `message`, usually by calling `next.run(message)`.
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult>;

    /// Whether the router should ack each message before the chain runs ([`InstantAck`]).
    fn acks_instantly(&self) -> bool {
        false
    }

    /// Built-in layers describe themselves here, so that a run of them executes as one future
    /// (no boxed future per layer); other middleware returns `None` and is called through
    /// [`call`](Middleware::call). [`FusedStep`] cannot be built outside millstream.
    #[doc(hidden)]
    fn fused_step(&self) -> Option<FusedStep> {
        None
    }
}

mod breaker;
mod chaos;
mod correlation;
mod dedup;
mod fused;
mod misc;
mod poison;
mod recoverer;
mod retry;
mod throttle;
mod timeout;
mod trace;

pub use self::breaker::{BreakerState, CircuitBreaker};
pub use self::chaos::{RandomFail, RandomPanic};
pub use self::correlation::CorrelationId;
pub use self::dedup::{DedupKey, DedupStore, Deduplicator, MemoryDedupStore};
#[doc(hidden)]
pub use self::fused::FusedStep;
pub use self::misc::{DelayOnNack, IgnoreErrors, InstantAck};
pub use self::poison::{poisoned, PoisonQueue, RedeliveryCap};
pub use self::recoverer::Recoverer;
pub use self::retry::{Retry, RetryEvent};
pub use self::throttle::Throttle;
pub use self::timeout::Timeout;
pub use self::trace::{TraceContext, TraceParent};
/// The metadata keys of the correlation and trace layers (defined in [`keys`](crate::keys)).
pub use crate::keys::{CORRELATION_ID, TRACEPARENT};
#[cfg(feature = "redis")]
pub use crate::pubsub::redis::RedisDedupStore;

/// What the router must know about a handler's layers before it runs them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LayerFacts {
    /// An [`InstantAck`] layer is among them: ack each message before the chain runs.
    pub(crate) acks_instantly: bool,
    /// A [`CorrelationId`] layer is among them: what the handler publishes through `Ctx` carries
    /// the correlation id too.
    pub(crate) correlates: bool,
}

/// The [`LayerFacts`] of a handler's layers (router-wide and its own).
pub(crate) fn layer_facts(layers: &[Arc<dyn Middleware>]) -> LayerFacts {
    LayerFacts {
        acks_instantly: layers.iter().any(|m| m.acks_instantly()),
        correlates: layers.iter().any(|m| m.fused_step().is_some_and(|step| step.correlates())),
    }
}

/// The type-erased handler at the end of a chain.
pub(crate) trait Endpoint: Send + Sync + 'static {
    /// Calls the handler, borrowing the chain (the router's call without middleware).
    fn call<'a>(&'a self, message: Message, cx: MessageCx<'a>) -> BoxFuture<'a, HandlerResult>;

    /// Calls the handler from the end of a middleware chain: one boxed future that owns what it
    /// borrows.
    fn call_owned(
        self: Arc<Self>,
        chain: Arc<Chain>,
        message: Message,
        attempt: u32,
    ) -> BoxFuture<'static, HandlerResult>;
}

/// One element of a chain: a middleware called through its trait object, or a run of built-in
/// layers executed as one future.
pub(crate) enum Layer {
    Custom(Arc<dyn Middleware>),
    Fused(fused::Segment),
}

/// A handler with its middleware, ready to be called.
pub(crate) struct Chain {
    layers: Box<[Layer]>,
    endpoint: Arc<dyn Endpoint>,
    pub(crate) route: Arc<RouteInfo>,
}

impl Chain {
    /// The chain of `middleware` (outermost first) around `endpoint`: consecutive built-in
    /// layers are merged into one fused run.
    pub(crate) fn new(
        middleware: Vec<Arc<dyn Middleware>>,
        endpoint: Arc<dyn Endpoint>,
        route: Arc<RouteInfo>,
    ) -> Self {
        let mut layers = Vec::new();
        let mut steps = Vec::new();
        let flush = |layers: &mut Vec<Layer>, steps: &mut Vec<fused::Step>| {
            if !steps.is_empty() {
                layers.push(Layer::Fused(fused::Segment::new(std::mem::take(steps))));
            }
        };
        for layer in middleware {
            match layer.fused_step() {
                Some(FusedStep(step)) => steps.push(step),
                None => {
                    flush(&mut layers, &mut steps);
                    layers.push(Layer::Custom(layer));
                }
            }
        }
        flush(&mut layers, &mut steps);
        Chain { layers: layers.into_boxed_slice(), endpoint, route }
    }

    /// Calls the chain from the top (see [`call_handler`](Chain::call_handler) and
    /// [`call_fused`](Chain::call_fused) for the cheaper calls of a bare chain and of one that
    /// starts fused).
    ///
    /// Every call returns a boxed future: the worker's per-message future holds a pointer, not
    /// the chain's state, so it stays small (it is built and moved for every message).
    pub(crate) fn call(self: &Arc<Self>, message: Message, attempt: u32) -> BoxFuture<'_, HandlerResult> {
        if self.layers.is_empty() {
            return self.call_handler(message, attempt);
        }
        Next { chain: self.clone(), index: 0, attempt }.run(message)
    }

    /// Whether the chain starts with a fused run of built-in layers.
    pub(crate) fn starts_fused(&self) -> bool {
        matches!(self.layers.first(), Some(Layer::Fused(_)))
    }

    /// Calls a chain that [`starts_fused`](Chain::starts_fused), borrowing it: no reference count
    /// taken. `kept` is a copy of `message` the caller keeps anyway (for its own poison path): the
    /// fused run uses it on a failure instead of taking a copy of its own.
    pub(crate) fn call_fused<'a>(
        self: &'a Arc<Self>,
        message: Message,
        kept: &'a Message,
        attempt: u32,
    ) -> BoxFuture<'a, HandlerResult> {
        let inner = fused::Inner { chain: self, index: 1, attempt };
        Box::pin(fused::run(self.segment(0), inner, message, Some(kept)))
    }

    /// Calls the handler itself (what [`call`](Chain::call) does when the chain is bare).
    pub(crate) fn call_handler(&self, message: Message, attempt: u32) -> BoxFuture<'_, HandlerResult> {
        self.endpoint.call(message, MessageCx { route: &self.route, attempt })
    }

    /// How many layers the chain has (fused runs count as one).
    fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// The fused run at `index`.
    fn segment(&self, index: usize) -> &fused::Segment {
        match &self.layers[index] {
            Layer::Fused(segment) => segment,
            Layer::Custom(_) => unreachable!("layer {index} is not a fused run"),
        }
    }
}

/// The rest of a middleware chain (the next middleware, or the handler).
pub struct Next {
    chain: Arc<Chain>,
    index: usize,
    attempt: u32,
}

impl Next {
    /// Runs the rest of the chain.
    pub fn run(self, message: Message) -> BoxFuture<'static, HandlerResult> {
        let Next { chain, index, attempt } = self;
        match chain.layers.get(index) {
            Some(Layer::Custom(layer)) => {
                let layer = layer.clone();
                layer.call(message, Next { chain, index: index + 1, attempt })
            }
            Some(Layer::Fused(_)) => {
                Box::pin(fused::run_chained(Next { chain, index: index + 1, attempt }, message))
            }
            None => chain.endpoint.clone().call_owned(chain, message, attempt),
        }
    }

    /// The handler's name.
    pub fn handler_name(&self) -> &str {
        &self.chain.route.name
    }

    /// The topic the message came from.
    pub fn topic(&self) -> &str {
        &self.chain.route.topic
    }

    /// How many times the message has been delivered, this time included.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The same rest of the chain, telling the layers and the handler below that this is attempt
    /// `attempt` (what [`Retry`] does for each retry, so that the handler's `Attempt` counts them).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The handler's publisher (for middleware that publishes, like [`PoisonQueue`]).
    pub fn publisher(&self) -> &Arc<dyn crate::pubsub::Publisher> {
        &self.chain.route.publisher
    }
}

impl Clone for Next {
    /// A copy of the rest of the chain, for middleware that calls it more than once (retries).
    fn clone(&self) -> Self {
        Next { chain: self.chain.clone(), index: self.index, attempt: self.attempt }
    }
}

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("handler", &self.handler_name())
            .field("remaining_layers", &(self.chain.layers.len() - self.index))
            .finish()
    }
}

/// A middleware made from an async fn `(Message, Next) -> HandlerResult`.
pub struct FromFn<F>(F);

/// Turns an async fn (or closure) into a [`Middleware`].
pub fn from_fn<F, Fut>(f: F) -> FromFn<F>
where
    F: Fn(Message, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    FromFn(f)
}

impl<F, Fut> Middleware for FromFn<F>
where
    F: Fn(Message, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        Box::pin((self.0)(message, next))
    }
}

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFn")
    }
}

/// [`Retry::new`]`(max_retries)`, for attribute lists: `#[handler(middleware = [retry(3)])]`.
pub fn retry(max_retries: u32) -> Retry {
    Retry::new(max_retries)
}

/// [`Timeout::new`]`(limit)`, for attribute lists: `#[handler(middleware = [timeout(Duration::from_secs(5))])]`.
pub fn timeout(limit: std::time::Duration) -> Timeout {
    Timeout::new(limit)
}

/// [`PoisonQueue::new`]`(topic)`, for attribute lists: `#[handler(middleware = [poison("dead")])]`.
pub fn poison(topic: &str) -> PoisonQueue {
    PoisonQueue::new(topic)
}
