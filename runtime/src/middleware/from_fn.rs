//! [`from_fn`]: a middleware from an async fn.

use std::fmt;
use std::future::Future;

use futures_core::future::BoxFuture;

use super::chain::{Middleware, Next};
use crate::handler::HandlerResult;
use crate::message::Message;

/// A middleware made from an async fn `(Message, Next) -> HandlerResult`.
pub struct FromFn<F>(F);

/// Turns an async fn (or closure) into a [`Middleware`].
///
/// It costs what any custom layer costs: one boxed future and one virtual call per message (a
/// run of built-in layers costs one future together).
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
