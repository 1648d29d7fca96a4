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

use crate::extract::{MessageCx, RouteInfo};
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
}

mod breaker;
mod chaos;
mod correlation;
mod dedup;
mod misc;
mod poison;
mod recoverer;
mod retry;
mod throttle;
mod timeout;
mod trace;

pub use self::breaker::{BreakerState, CircuitBreaker};
pub use self::chaos::{RandomFail, RandomPanic};
pub use self::correlation::{CorrelationId, CORRELATION_ID};
pub use self::dedup::{DedupKey, DedupStore, Deduplicator, MemoryDedupStore};
pub use self::misc::{DelayOnNack, IgnoreErrors, InstantAck};
pub use self::poison::{poisoned, PoisonQueue, RedeliveryCap};
pub use self::recoverer::Recoverer;
pub use self::retry::{Retry, RetryEvent};
pub use self::throttle::Throttle;
pub use self::timeout::Timeout;
pub use self::trace::{TraceContext, TraceParent, TRACEPARENT};

/// The type-erased handler at the end of a chain.
pub(crate) trait Endpoint: Send + Sync + 'static {
    fn call<'a>(&'a self, message: Message, cx: MessageCx<'a>) -> BoxFuture<'a, HandlerResult>;
}

/// A handler with its middleware, ready to be called.
pub(crate) struct Chain {
    pub(crate) middleware: Box<[Arc<dyn Middleware>]>,
    pub(crate) endpoint: Arc<dyn Endpoint>,
    pub(crate) route: Arc<RouteInfo>,
}

impl Chain {
    /// Calls the chain from the top. Without middleware, calls the handler directly: one boxed
    /// future per message instead of two, and no reference count taken on the chain.
    pub(crate) fn call(self: &Arc<Self>, message: Message, attempt: u32) -> BoxFuture<'_, HandlerResult> {
        if self.middleware.is_empty() {
            return self.endpoint.call(message, MessageCx { route: &self.route, attempt });
        }
        Next { chain: self.clone(), index: 0, attempt }.run(message)
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
        match self.chain.middleware.get(self.index).cloned() {
            Some(layer) => {
                let next = Next { chain: self.chain, index: self.index + 1, attempt: self.attempt };
                layer.call(message, next)
            }
            None => Box::pin(async move {
                let chain = self.chain;
                let cx = MessageCx { route: &chain.route, attempt: self.attempt };
                chain.endpoint.call(message, cx).await
            }),
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
            .field("remaining_layers", &(self.chain.middleware.len() - self.index))
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
