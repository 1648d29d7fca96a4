//! [`Recoverer`]: turns a handler panic into an error.

use futures_core::future::BoxFuture;

use super::chain::{Middleware, Next};
use super::step::{BuiltIn, Shape, Step};
use crate::handler::HandlerResult;
use crate::message::Message;

/// Catches a panic in the rest of the chain and returns it as an [`ErrorKind::Panic`](crate::ErrorKind::Panic) error with
/// the panic text, so that the layers outside it (retry, poison queue) treat it like any failure.
///
/// Without it the router still catches panics (and nacks), but no middleware sees them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recoverer;

/// A panic guard around the steps inside (the engine catches the panic while polling them).
impl Step for Recoverer {
    fn shape(&self) -> Shape {
        Shape { catches_panics: true, ..Shape::default() }
    }
}

impl Middleware for Recoverer {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        next.run_step(*self, message)
    }

    fn __built_in(&self) -> Option<BuiltIn> {
        Some(BuiltIn::new(*self))
    }
}
