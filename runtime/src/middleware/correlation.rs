//! [`CorrelationId`]: one id that follows a message and everything it causes.

use futures_core::future::BoxFuture;

use super::{Middleware, Next};
use crate::handler::HandlerResult;
use crate::message::Message;

/// The metadata key of the correlation id.
pub const CORRELATION_ID: &str = "correlation_id";

/// Gives every message a correlation id (its own id, when it arrives without one) and copies it
/// onto every message the handler returns, so a business flow can be followed across topics.
/// Messages published through [`Ctx`](crate::Ctx) carry the input's correlation id as well.
#[derive(Clone, Copy, Debug, Default)]
pub struct CorrelationId;

impl Middleware for CorrelationId {
    fn call(&self, mut message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        let id: Box<str> = match message.metadata().get(CORRELATION_ID) {
            Some(id) => id.into(),
            None => {
                let id: Box<str> = message.id().to_string().into();
                message.metadata_mut().insert(CORRELATION_ID, id.clone());
                id
            }
        };
        Box::pin(async move {
            let mut outputs = next.run(message).await?;
            for output in &mut outputs {
                if !output.message.metadata().contains_key(CORRELATION_ID) {
                    output.message.metadata_mut().insert(CORRELATION_ID, id.clone());
                }
            }
            Ok(outputs)
        })
    }
}
