//! The [`Middleware`] trait, [`Next`] (the rest of a chain) and the crate-private [`Chain`] they
//! run in: three types that refer to each other (a middleware is called with a `Next`, a `Next`
//! points into a chain, a chain holds middleware), so they share this file.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;

use super::engine::{self, Rest, Segment};
use super::step::{BuiltIn, Kind, Step};
use crate::batch::BatchOutcome;
use crate::context::{MessageCx, RouteInfo};
use crate::handler::HandlerResult;
use crate::message::Message;

/// A layer around handler calls. See the [module docs](super).
///
/// Implement [`call`](Middleware::call), or write an async fn and use
/// [`from_fn`](super::from_fn) or `#[millstream::middleware]`.
pub trait Middleware: Send + Sync + 'static {
    /// Handles `message`, usually by calling `next.run(message)`.
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult>;

    /// A built-in layer's step, so that a run of built-in layers executes as one future. The
    /// return type cannot be named outside millstream: this method cannot be overridden there,
    /// and no other middleware passes for a built-in one (to make the router ack early, say):
    ///
    /// ```compile_fail
    /// use millstream::middleware::{BoxFuture, InstantAck, Middleware, Next};
    /// use millstream::{HandlerResult, Message};
    ///
    /// struct Sneaky;
    ///
    /// impl Middleware for Sneaky {
    ///     fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
    ///         next.run(message)
    ///     }
    ///
    ///     fn __built_in(&self) -> Option<millstream::middleware::step::BuiltIn> {
    ///         InstantAck.__built_in()
    ///     }
    /// }
    /// ```
    #[doc(hidden)]
    fn __built_in(&self) -> Option<BuiltIn> {
        None
    }
}

/// What the router must know about a handler's layers before it runs them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LayerFacts {
    /// An [`InstantAck`](super::InstantAck) layer is among them: ack each message before the
    /// chain runs.
    pub(crate) acks_instantly: bool,
    /// A [`CorrelationId`](super::CorrelationId) layer is among them: what the handler publishes
    /// through `Ctx` carries the correlation id too.
    pub(crate) correlates: bool,
    /// A layer decides on the backend's attempt count (its name): the backend must count them.
    /// A layer inside a [`CountAttempts`](super::CountAttempts) decides on that one's count
    /// instead, and is not named here.
    pub(crate) reads_attempts: Option<&'static str>,
}

/// The [`LayerFacts`] of a handler's layers (router-wide and its own). Only built-in layers can
/// set them.
pub(crate) fn layer_facts(layers: &[Arc<dyn Middleware>]) -> LayerFacts {
    let mut facts = LayerFacts::default();
    let mut counted = false;
    for BuiltIn(kind) in layers.iter().filter_map(|layer| layer.__built_in()) {
        let step = match kind {
            Kind::Step(step) => step,
            Kind::CountsAttempts => {
                counted = true;
                continue;
            }
        };
        let shape = step.shape();
        facts.acks_instantly |= shape.acks_instantly;
        facts.correlates |= shape.correlates;
        if !counted {
            facts.reads_attempts = facts.reads_attempts.or(shape.reads_attempts);
        }
    }
    facts
}

/// The type-erased handler at the end of a chain.
pub(crate) trait Endpoint: Send + Sync + 'static {
    /// Calls the handler, borrowing the chain (the router's call without middleware).
    fn call<'a>(&'a self, message: Message, cx: MessageCx<'a>) -> BoxFuture<'a, HandlerResult>;

    /// A [`CallSlot`] for calls of this handler without middleware, where the endpoint has one.
    fn call_slot<'a>(&'a self, route: &'a Arc<RouteInfo>) -> Option<Box<dyn CallSlot<'a> + 'a>> {
        let _ = route;
        None
    }

    /// Calls the handler from the end of a middleware chain: one boxed future that owns what it
    /// borrows.
    fn call_owned(
        self: Arc<Self>,
        chain: Arc<Chain>,
        message: Message,
        attempt: u32,
    ) -> BoxFuture<'static, HandlerResult>;

    /// Calls a batch handler with one batch (a batch route's endpoint); other endpoints refuse.
    fn call_batch<'a>(
        &'a self,
        messages: Vec<Message>,
        cx: MessageCx<'a>,
    ) -> BoxFuture<'a, crate::error::Result<BatchOutcome>> {
        let _ = messages;
        let error = crate::error::Error::new(
            crate::error::ErrorKind::Config,
            format!("handler `{}` is not a batch handler", cx.route.name),
        );
        Box::pin(std::future::ready(Err(error)))
    }
}

/// A place for one handler call at a time, reused from call to call.
///
/// A call through [`Endpoint::call`] is a boxed future: an allocation and a free for every
/// message. A worker that calls one handler after another instead keeps a slot: each call's
/// future is built in the slot's pinned place, polled there, and dropped there when it is done.
pub(crate) trait CallSlot<'a>: Send {
    /// Starts a call with `message` and polls it once.
    ///
    /// # Panics
    /// If a call is still in the slot.
    fn start(&mut self, message: Message, attempt: u32, cx: &mut Context<'_>) -> Poll<HandlerResult>;

    /// Polls the call started last; `Ready` once, then the slot is free again.
    ///
    /// # Panics
    /// If no call is in the slot.
    fn resume(&mut self, cx: &mut Context<'_>) -> Poll<HandlerResult>;
}

/// A [`CallSlot`] whose calls are made by `make`.
pub(crate) fn call_slot<'a, Make, F>(make: Make) -> Box<dyn CallSlot<'a> + 'a>
where
    Make: Fn(Message, u32) -> F + Send + 'a,
    F: Future<Output = HandlerResult> + Send + 'a,
{
    Box::new(Slot { make, call: Box::pin(None) })
}

struct Slot<Make, F> {
    make: Make,
    call: Pin<Box<Option<F>>>,
}

impl<'a, Make, F> CallSlot<'a> for Slot<Make, F>
where
    Make: Fn(Message, u32) -> F + Send + 'a,
    F: Future<Output = HandlerResult> + Send + 'a,
{
    fn start(&mut self, message: Message, attempt: u32, cx: &mut Context<'_>) -> Poll<HandlerResult> {
        assert!(self.call.is_none(), "a call slot holds one call at a time");
        self.call.set(Some((self.make)(message, attempt)));
        self.resume(cx)
    }

    fn resume(&mut self, cx: &mut Context<'_>) -> Poll<HandlerResult> {
        let call = self.call.as_mut().as_pin_mut().expect("a call in the slot");
        let result = std::task::ready!(call.poll(cx));
        self.call.set(None);
        Poll::Ready(result)
    }
}

/// One element of a chain: a middleware called through its trait object, or a run of built-in
/// layers executed as one future.
enum Layer {
    Custom(Arc<dyn Middleware>),
    Fused(Segment),
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
        let flush = |layers: &mut Vec<Layer>, steps: &mut Vec<Box<dyn Step>>| {
            if !steps.is_empty() {
                layers.push(Layer::Fused(Segment::new(std::mem::take(steps))));
            }
        };
        for layer in middleware {
            match layer.__built_in() {
                Some(BuiltIn(Kind::Step(step))) => steps.push(step),
                Some(BuiltIn(Kind::CountsAttempts)) | None => {
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
        self.next(attempt).run(message)
    }

    /// Whether the chain starts with a fused run of built-in layers.
    pub(crate) fn starts_fused(&self) -> bool {
        matches!(self.layers.first(), Some(Layer::Fused(_)))
    }

    /// Calls a chain that [`starts_fused`](Chain::starts_fused), borrowing it: no reference count
    /// taken. `kept` is a copy of `message` the caller keeps anyway (for its own poison path): the
    /// fused run uses it instead of taking a copy of its own.
    pub(crate) fn call_fused<'a>(
        self: &'a Arc<Self>,
        message: Message,
        kept: &'a Message,
        attempt: u32,
    ) -> BoxFuture<'a, HandlerResult> {
        let Some(Layer::Fused(segment)) = self.layers.first() else {
            unreachable!("call_fused on a chain that does not start fused")
        };
        let rest = Inner { chain: self, index: 1, attempt };
        Box::pin(engine::run(segment, rest, message, Some(kept)))
    }

    /// [`call_fused`](Chain::call_fused) with a copy of the message the call owns, for a caller
    /// that cannot lend one for as long as the call runs.
    pub(crate) fn call_fused_owned(
        self: &Arc<Self>,
        message: Message,
        kept: Message,
        attempt: u32,
    ) -> BoxFuture<'_, HandlerResult> {
        let Some(Layer::Fused(segment)) = self.layers.first() else {
            unreachable!("call_fused_owned on a chain that does not start fused")
        };
        let rest = Inner { chain: self, index: 1, attempt };
        Box::pin(async move { engine::run(segment, rest, message, Some(&kept)).await })
    }

    /// Calls a batch handler with one batch, without the middleware (which wraps one message at a
    /// time).
    pub(crate) fn call_batch(
        &self,
        messages: Vec<Message>,
        attempt: u32,
    ) -> BoxFuture<'_, crate::error::Result<BatchOutcome>> {
        self.endpoint.call_batch(messages, MessageCx { route: &self.route, attempt })
    }

    /// A [`CallSlot`] for this chain's calls, when it is bare (no middleware) and its handler
    /// has one.
    pub(crate) fn call_slot(&self) -> Option<Box<dyn CallSlot<'_> + '_>> {
        if self.layers.is_empty() {
            return self.endpoint.call_slot(&self.route);
        }
        None
    }

    /// Calls the handler itself (what [`call`](Chain::call) does when the chain is bare).
    pub(crate) fn call_handler(&self, message: Message, attempt: u32) -> BoxFuture<'_, HandlerResult> {
        self.endpoint.call(message, MessageCx { route: &self.route, attempt })
    }

    /// The whole chain as a [`Next`], for attempt `attempt`.
    pub(crate) fn next(self: &Arc<Self>, attempt: u32) -> Next {
        Next { chain: self.clone(), index: 0, attempt }
    }
}

/// The rest of a chain after a fused run, borrowed: a reference count is only taken when the
/// rest must be handed on (to a custom layer).
#[derive(Clone, Copy)]
struct Inner<'a> {
    chain: &'a Arc<Chain>,
    index: usize,
    attempt: u32,
}

impl Rest for Inner<'_> {
    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn route(&self) -> &Arc<RouteInfo> {
        &self.chain.route
    }

    fn starts_with_a_custom_layer(&self) -> bool {
        // After a fused run comes a custom layer or the handler.
        self.index < self.chain.layers.len()
    }

    /// Runs the rest of the chain as attempt `attempt`; the handler alone is called in place.
    fn run(&self, message: Message, attempt: u32) -> BoxFuture<'_, HandlerResult> {
        if self.index == self.chain.layers.len() {
            return self.chain.call_handler(message, attempt);
        }
        Next { chain: self.chain.clone(), index: self.index, attempt }.run(message)
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
            Some(Layer::Fused(_)) => Box::pin(async move {
                let Some(Layer::Fused(segment)) = chain.layers.get(index) else { unreachable!() };
                let rest = Inner { chain: &chain, index: index + 1, attempt };
                engine::run(segment, rest, message, None).await
            }),
            None => chain.endpoint.clone().call_owned(chain, message, attempt),
        }
    }

    /// Runs one built-in layer's `step` around the rest of the chain: what a built-in layer's
    /// [`Middleware::call`] does when it is called by hand rather than fused into a chain.
    pub(crate) fn run_step(self, step: impl Step, message: Message) -> BoxFuture<'static, HandlerResult> {
        let segment = Segment::new(vec![Box::new(step)]);
        Box::pin(async move {
            let rest = Inner { chain: &self.chain, index: self.index, attempt: self.attempt };
            engine::run(&segment, rest, message, None).await
        })
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
    /// `attempt` (what [`Retry`](super::Retry) does for each retry, so that the handler's
    /// `Attempt` counts them).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The handler's publisher (for middleware that publishes, like [`PoisonQueue`](super::PoisonQueue)).
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
