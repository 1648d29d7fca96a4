//! [`CorrelationId`]: one id that follows a message and everything it causes.

use futures_core::future::BoxFuture;

use super::chain::{Middleware, Next};
use super::step::{BuiltIn, Cx, Frame, Leave, Shape, Step};
use crate::handler::HandlerResult;
use crate::keys::CORRELATION_ID;
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

/// Leaving with outputs, the step stamps each that has no correlation id with the input's (its
/// own id when it has none). What the handler publishes through `Ctx` is stamped by `Ctx`, which
/// learns from the route that this layer is there.
impl Step for CorrelationId {
    fn shape(&self) -> Shape {
        Shape { keeps_message: true, acts_on_outputs: true, correlates: true, ..Shape::default() }
    }

    fn leave(&self, outcome: &mut HandlerResult, _: &Frame, cx: &Cx<'_>) -> Leave {
        let (Ok(outputs), Some(input)) = (outcome, cx.message) else { return Leave::Pass };
        let mut formatted = None;
        for output in outputs {
            if output.message.metadata().contains_key(CORRELATION_ID) {
                continue;
            }
            let value: Box<str> = match input.metadata().get(CORRELATION_ID) {
                Some(id) => id.into(),
                None => formatted.get_or_insert_with(|| input.id().to_boxed_str()).clone(),
            };
            output.message.metadata_mut().insert_static(CORRELATION_ID, value);
        }
        Leave::Pass
    }
}

impl Middleware for CorrelationId {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        next.run_step(*self, message)
    }

    fn __built_in(&self) -> Option<BuiltIn> {
        Some(BuiltIn::new(*self))
    }
}
