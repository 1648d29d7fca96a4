//! [`InstantAck`]: at-most-once delivery for more throughput.

use futures_core::future::BoxFuture;

use super::chain::{Middleware, Next};
use super::step::{BuiltIn, Shape, Step};
use crate::handler::HandlerResult;
use crate::message::Message;

/// Acks each message as soon as it arrives, before the handler runs: more throughput, at the
/// cost of at-most-once delivery (a crash or failure loses the message). The router sees this
/// layer in a handler's chain and acks first; outputs are still published after the handler.
///
/// Only this layer can make the router ack early: a custom middleware cannot.
#[derive(Clone, Copy, Debug, Default)]
pub struct InstantAck;

/// Nothing per message: the router reads the shape when it builds the route.
impl Step for InstantAck {
    fn shape(&self) -> Shape {
        Shape { acks_instantly: true, ..Shape::default() }
    }
}

impl Middleware for InstantAck {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        next.run(message)
    }

    fn __built_in(&self) -> Option<BuiltIn> {
        Some(BuiltIn::new(*self))
    }
}
