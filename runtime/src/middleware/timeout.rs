//! [`Timeout`]: fails a handler call that takes too long.

use std::time::Duration;

use futures_core::future::BoxFuture;

use super::fused::{call_single, Step};
use super::{FusedStep, Middleware, Next};
use crate::handler::HandlerResult;
use crate::message::Message;

/// Fails the rest of the chain with an [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) error
/// (transient: nacked or retried) when it runs longer than the limit; the handler's future is
/// dropped at that point.
///
/// The limit counts from the first time the rest of the chain waits (its first `Pending`): the
/// synchronous work before that cannot be interrupted by any timeout and is not counted, and a
/// call that completes without waiting costs no clock read and no timer.
///
/// Placed inside a [`Retry`](super::Retry) (added after it), each attempt gets a fresh limit;
/// placed outside, the limit covers all attempts together. [`Retry::attempt_timeout`](super::Retry::attempt_timeout)
/// is the first arrangement in one layer.
#[derive(Clone, Copy, Debug)]
pub struct Timeout {
    limit: Duration,
}

impl Timeout {
    /// A limit of `limit` per call.
    pub fn new(limit: Duration) -> Self {
        Timeout { limit }
    }
}

impl Middleware for Timeout {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        call_single(Step::Timeout(self.limit), message, next)
    }

    fn fused_step(&self) -> Option<FusedStep> {
        Some(FusedStep(Step::Timeout(self.limit)))
    }
}
