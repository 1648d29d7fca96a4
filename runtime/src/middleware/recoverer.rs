//! [`Recoverer`]: turns a handler panic into an error.

use futures_core::future::BoxFuture;

use super::fused::{call_single, Step};
use super::{FusedStep, Middleware, Next};
use crate::handler::HandlerResult;
use crate::message::Message;

/// Catches a panic in the rest of the chain and returns it as an [`ErrorKind::Panic`](crate::ErrorKind::Panic) error with
/// the panic text, so that the layers outside it (retry, poison queue) treat it like any failure.
///
/// Without it the router still catches panics (and nacks), but no middleware sees them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recoverer;

impl Middleware for Recoverer {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        call_single(Step::Recover, message, next)
    }

    fn fused_step(&self) -> Option<FusedStep> {
        Some(FusedStep(Step::Recover))
    }
}
