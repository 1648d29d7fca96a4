//! tower interop (feature `tower`): any [`tower::Layer`] as a middleware, and the
//! rest of a chain as a [`tower::Service`].
//!
//! [`TowerLayer::new`] applies a layer once, to [`Rest`] (the service that runs the rest of the
//! chain), and calls the service it built for every message. Tower's timeouts, concurrency
//! limits, load shedding and rate limits, and a team's own layers, wrap a handler as they wrap
//! an HTTP endpoint:
//!
//! ```
//! # #[cfg(feature = "tower")] {
//! use millstream::middleware::tower::TowerLayer;
//! use millstream::{App, MemoryPubSub, Route};
//!
//! # async fn bill(_: serde_json::Value) {}
//! let app = App::new().pubsub(MemoryPubSub::new()).route(
//!     Route::new("bill", "orders", bill)
//!         // At most 8 messages in the handler at once, across its workers.
//!         .layer(TowerLayer::new(tower::limit::ConcurrencyLimitLayer::new(8))),
//! );
//! # let _ = app; }
//! ```
//!
//! The request is a [`Request`]: the message and the rest of the chain that will handle it
//! (tower's layers are generic over the request; a layer of your own reads the message through
//! [`Request::message`]). Every service built by one `TowerLayer` value is shared by all the
//! chains that value is part of: a layer added router-wide is one limit for every handler, one
//! added to a handler is that handler's (its workers share it). Clone the `TowerLayer` before it
//! serves any message for an independent copy.
//!
//! Errors: the rest of the chain fails with a [`ChainError`] holding millstream's [`Error`],
//! which comes back out unchanged; tower's `Elapsed` (its timeout) becomes an
//! [`ErrorKind::Timeout`] error, its `Overloaded` (load shedding) a transient
//! [`ErrorKind::Handler`] error, and any other error a transient handler error with it as the
//! source. All of them are nacked or retried like a handler's error.
//!
//! The other way round, [`Next`] is a `tower::Service<Message>`: a middleware can hand the rest
//! of its chain to code written against tower.
//!
//! A tower layer costs what a custom middleware costs (a boxed future per message), plus its
//! own work and the clone of its service that tower's `poll_ready`/`call` protocol asks for.

use std::error::Error as StdError;
use std::fmt;
use std::task::{Context, Poll};

use ::tower::{Layer, Service};
use futures_core::future::BoxFuture;
use futures_util::future::Map;
use futures_util::FutureExt;
use parking_lot::Mutex;

use super::chain::{Middleware, Next};
use crate::error::{Error, ErrorKind};
use crate::handler::{HandlerResult, Outputs};
use crate::message::Message;

/// The error type tower's layers use.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A message on its way through a tower layer: the message, and the rest of the chain that
/// [`Rest`] runs it through.
#[derive(Clone, Debug)]
pub struct Request {
    message: Message,
    next: Next,
}

impl Request {
    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message, to change before the rest of the chain sees it.
    pub fn message_mut(&mut self) -> &mut Message {
        &mut self.message
    }

    /// The rest of the chain (its handler name, topic, attempt).
    pub fn next(&self) -> &Next {
        &self.next
    }

    /// The message and the rest of the chain.
    pub fn into_parts(self) -> (Message, Next) {
        (self.message, self.next)
    }
}

/// The rest of the chain failed: millstream's [`Error`], as a `std::error::Error` for tower.
#[derive(Debug)]
pub struct ChainError(pub Error);

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for ChainError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source().map(|source| source as &(dyn StdError + 'static))
    }
}

/// The future of [`Rest`] and of [`Next`] as a service.
pub type ChainFuture =
    Map<BoxFuture<'static, HandlerResult>, fn(HandlerResult) -> Result<Outputs, ChainError>>;

fn chain_result(result: HandlerResult) -> Result<Outputs, ChainError> {
    result.map_err(ChainError)
}

/// The service a [`TowerLayer`]'s layer wraps: runs each [`Request`] through the rest of its
/// chain. Always ready.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rest;

impl Service<Request> for Rest {
    type Response = Outputs;
    type Error = ChainError;
    type Future = ChainFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        request.next.run(request.message).map(chain_result as fn(_) -> _)
    }
}

/// The rest of a chain as a tower service (always ready; each call runs a copy of it).
impl Service<Message> for Next {
    type Response = Outputs;
    type Error = ChainError;
    type Future = ChainFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        self.clone().run(message).map(chain_result as fn(_) -> _)
    }
}

/// A [`tower::Layer`] as a [`Middleware`]; see the [module docs](self).
pub struct TowerLayer<S> {
    /// The service the layer built around [`Rest`]; each message is handled by a clone of it.
    service: Mutex<S>,
}

impl<S> TowerLayer<S> {
    /// Applies `layer` to [`Rest`] once; the service it builds handles every message.
    pub fn new<L>(layer: L) -> Self
    where
        L: Layer<Rest, Service = S>,
    {
        TowerLayer { service: Mutex::new(layer.layer(Rest)) }
    }
}

impl<S: Clone> Clone for TowerLayer<S> {
    fn clone(&self) -> Self {
        TowerLayer { service: Mutex::new(self.service.lock().clone()) }
    }
}

impl<S> fmt::Debug for TowerLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TowerLayer").field("service", &std::any::type_name::<S>()).finish()
    }
}

impl<S> Middleware for TowerLayer<S>
where
    S: Service<Request, Response = Outputs> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        let mut service = self.service.lock().clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx)).await.map_err(from_tower)?;
            service.call(Request { message, next }).await.map_err(from_tower)
        })
    }
}

/// millstream's error for what a tower service failed with.
pub fn from_tower(error: impl Into<BoxError>) -> Error {
    let error = match error.into().downcast::<ChainError>() {
        Ok(chain) => return chain.0,
        Err(error) => error,
    };
    let error = match error.downcast::<::tower::timeout::error::Elapsed>() {
        Ok(elapsed) => return Error::with_source(ErrorKind::Timeout, *elapsed),
        Err(error) => error,
    };
    let error = match error.downcast::<::tower::load_shed::error::Overloaded>() {
        Ok(overloaded) => return Error::with_source(ErrorKind::Handler, *overloaded),
        Err(error) => error,
    };
    Error::with_source(ErrorKind::Handler, Other(error))
}

/// Any other error of a tower service, as the source of millstream's.
struct Other(BoxError);

impl fmt::Debug for Other {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Other {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for Other {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}
