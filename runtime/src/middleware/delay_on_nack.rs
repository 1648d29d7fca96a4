//! [`DelayOnNack`]: asks the backend to wait before redelivering a failed message.

use std::time::Duration;

use futures_core::future::BoxFuture;

use super::chain::{Middleware, Next};
use super::step::{BuiltIn, Cx, Frame, Leave, Shape, Step};
use crate::handler::{HandlerResult, Outputs};
use crate::message::Message;

/// Asks the backend to wait before redelivering a failed message: the delay grows with the
/// attempt number (`base × 2^(attempt-1)`, capped at `max`). Backends that cannot delay
/// redeliver at once. An error that already asks for a delay keeps its own.
#[derive(Clone, Copy, Debug)]
pub struct DelayOnNack {
    base: Duration,
    max: Duration,
}

impl DelayOnNack {
    /// Starts at `base`, doubling per attempt up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        DelayOnNack { base, max }
    }

    /// The delay after the failure of delivery `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// Leaving with an error, the step adds the delay to it.
impl Step for DelayOnNack {
    fn shape(&self) -> Shape {
        Shape::default()
    }

    fn leave(&self, outcome: &mut HandlerResult, frame: &Frame, _: &Cx<'_>) -> Leave {
        if matches!(outcome, Err(error) if error.retry_after_hint().is_none()) {
            let delay = self.delay(frame.attempt);
            *outcome =
                std::mem::replace(outcome, Ok(Outputs::new())).map_err(|error| error.retry_after(delay));
        }
        Leave::Pass
    }
}

impl Middleware for DelayOnNack {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        next.run_step(*self, message)
    }

    fn __built_in(&self) -> Option<BuiltIn> {
        Some(BuiltIn::new(*self))
    }
}
