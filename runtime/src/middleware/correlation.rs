//! [`CorrelationId`]: one id that follows a message and everything it causes.

use futures_core::future::BoxFuture;

use super::fused::{call_single, Step};
use super::{FusedStep, Middleware, Next};
use crate::handler::HandlerResult;
use crate::message::Message;

/// Copies the input's correlation id onto every message the handler returns or publishes through
/// [`Ctx`](crate::Ctx), so a business flow can be followed across topics.
///
/// A message that arrives without a `correlation_id` is the root of its flow: its own id is the
/// correlation id its outputs carry. The input itself is not changed (the layer costs nothing per
/// message that publishes nothing); [`Ctx::correlation_id`](crate::Ctx::correlation_id) and the
/// `correlation_id` field of the message's span give the effective id.
#[derive(Clone, Copy, Debug, Default)]
pub struct CorrelationId;

impl Middleware for CorrelationId {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        call_single(Step::Correlation, message, next)
    }

    fn fused_step(&self) -> Option<FusedStep> {
        Some(FusedStep(Step::Correlation))
    }
}
