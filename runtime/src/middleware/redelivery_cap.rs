//! [`RedeliveryCap`]: stops a message that keeps coming back.

use futures_core::future::BoxFuture;

use super::chain::{Middleware, Next};
use super::step::{BuiltIn, Shape, Step};
use crate::error::{Error, ErrorKind};
use crate::handler::HandlerResult;
use crate::message::Message;

/// Stops a message that keeps coming back: from delivery `max + 1` on, the handler is not called
/// and the message fails permanently (so a [`PoisonQueue`](super::PoisonQueue), or the router's
/// poison topic, takes it). For backends that redeliver forever.
///
/// Inside a [`Retry`](super::Retry), each retry counts as a delivery.
#[derive(Clone, Copy, Debug)]
pub struct RedeliveryCap {
    max: u32,
}

impl RedeliveryCap {
    /// Allows `max` deliveries.
    pub fn new(max: u32) -> Self {
        RedeliveryCap { max: max.max(1) }
    }
}

/// Entering, the step refuses a delivery past the cap.
impl Step for RedeliveryCap {
    fn shape(&self) -> Shape {
        Shape { checks_entry: true, reads_attempts: Some("RedeliveryCap"), ..Shape::default() }
    }

    fn enter(&self, attempt: u32) -> Result<(), Error> {
        if attempt <= self.max {
            return Ok(());
        }
        let text = format!("delivered {attempt} times, more than the cap of {}", self.max);
        Err(Error::new(ErrorKind::Handler, text).into_permanent())
    }
}

impl Middleware for RedeliveryCap {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        next.run_step(*self, message)
    }

    fn __built_in(&self) -> Option<BuiltIn> {
        Some(BuiltIn::new(*self))
    }
}
