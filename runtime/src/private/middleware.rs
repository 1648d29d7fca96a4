//! What `#[millstream::middleware]` fns and a handler's `middleware = [..]` entries become.

use std::future::Future;
use std::sync::Arc;

use crate::handler::HandlerResult;
use crate::message::Message;
use crate::middleware::{Middleware, Next};
use crate::router::Route;

/// What `middleware = [..]` accepts: a [`Middleware`] value, or an async fn
/// `(Message, Next) -> HandlerResult` (such as a `#[millstream::middleware]` fn).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a middleware",
    label = "not a middleware",
    note = "`middleware = [..]` takes values implementing `millstream::Middleware` and async fns `(Message, Next) -> HandlerResult`, such as `#[millstream::middleware]` fns"
)]
pub trait IntoMiddleware<Marker> {
    /// Adds the middleware to `route`.
    fn add_to(self, route: Route) -> Route;
}

/// Marker: a [`Middleware`] value.
#[derive(Debug)]
pub enum IsMiddleware {}

/// Marker: an async fn `(Message, Next) -> HandlerResult`.
#[derive(Debug)]
pub enum IsFn {}

impl<T: Middleware> IntoMiddleware<IsMiddleware> for T {
    fn add_to(self, route: Route) -> Route {
        route.layer(self)
    }
}

impl<F, Fut> IntoMiddleware<(IsFn, Fut)> for F
where
    F: Fn(Message, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn add_to(self, route: Route) -> Route {
        route.layer(crate::middleware::from_fn(self))
    }
}

/// Adds a handler's `middleware = [..]` entry to its route.
pub fn with_middleware<M>(route: Route, layer: impl IntoMiddleware<M>) -> Route {
    layer.add_to(route)
}

/// The first parameter of a `#[millstream::middleware]` fn: the [`Message`].
#[diagnostic::on_unimplemented(
    message = "a middleware's first parameter is the `Message`, not `{Self}`",
    label = "expected `Message`",
    note = "a middleware is `async fn name(message: Message, next: Next) -> HandlerResult`"
)]
pub trait MiddlewareMessage: Send + 'static {
    /// The argument, from the message.
    fn from_message(message: Message) -> Self;
}

impl MiddlewareMessage for Message {
    fn from_message(message: Message) -> Self {
        message
    }
}

/// The second parameter of a `#[millstream::middleware]` fn: [`Next`].
#[diagnostic::on_unimplemented(
    message = "a middleware's last parameter is `Next`, not `{Self}`",
    label = "expected `Next`",
    note = "a middleware is `async fn name(message: Message, next: Next) -> HandlerResult`"
)]
pub trait MiddlewareNext: Send + 'static {
    /// The argument, from the rest of the chain.
    fn from_next(next: Next) -> Self;
}

impl MiddlewareNext for Next {
    fn from_next(next: Next) -> Self {
        next
    }
}

/// What a `#[millstream::middleware]` fn returns: [`HandlerResult`].
#[diagnostic::on_unimplemented(
    message = "a middleware returns `HandlerResult`, not `{Self}`",
    label = "expected `HandlerResult`",
    note = "return what `next.run(message).await` gives, possibly changed"
)]
pub trait MiddlewareOutput: Send + 'static {
    /// The result for the chain.
    fn into_result(self) -> HandlerResult;
}

impl MiddlewareOutput for HandlerResult {
    fn into_result(self) -> HandlerResult {
        self
    }
}

/// The [`Middleware`] of a `#[millstream::middleware]` fn taking `A` and `N` and returning `R`.
pub fn middleware_fn<F, Fut, A, N, R>(middleware: F) -> Arc<dyn Middleware>
where
    F: Fn(A, N) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    A: MiddlewareMessage,
    N: MiddlewareNext,
    R: MiddlewareOutput,
{
    Arc::new(crate::middleware::from_fn(move |message: Message, next: Next| {
        let call = middleware(A::from_message(message), N::from_next(next));
        async move { call.await.into_result() }
    }))
}
