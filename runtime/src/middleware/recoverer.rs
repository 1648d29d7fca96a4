//! [`Recoverer`]: turns a handler panic into an error.

use std::panic::AssertUnwindSafe;

use futures_core::future::BoxFuture;
use futures_util::FutureExt;

use super::{Middleware, Next};
use crate::error::{Error, ErrorKind};
use crate::handler::HandlerResult;
use crate::message::Message;

/// Catches a panic in the rest of the chain and returns it as an [`ErrorKind::Panic`] error with
/// the panic text, so that the layers outside it (retry, poison queue) treat it like any failure.
///
/// Without it the router still catches panics (and nacks), but no middleware sees them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recoverer;

impl Middleware for Recoverer {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        Box::pin(async move {
            match AssertUnwindSafe(next.run(message)).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => Err(Error::new(ErrorKind::Panic, crate::router::panic_text(&*panic))),
            }
        })
    }
}
