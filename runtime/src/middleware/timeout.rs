//! [`Timeout`]: fails a handler call that takes too long.

use std::time::Duration;

use futures_core::future::BoxFuture;

use super::chain::{Middleware, Next};
use super::step::{BuiltIn, Expiry, Shape, Step};
use crate::error::{Error, ErrorKind};
use crate::handler::HandlerResult;
use crate::message::Message;

/// Fails the rest of the chain with an [`ErrorKind::Timeout`] error (transient: nacked or
/// retried) when it runs longer than the limit; the handler's future is dropped at that point.
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

/// A deadline around the steps inside; when it passes, they are abandoned and the layers outside
/// see the error.
impl Step for Timeout {
    fn shape(&self) -> Shape {
        Shape { deadline: Some(self.limit), ..Shape::default() }
    }

    fn expired(&self) -> Expiry {
        let error = Error::new(ErrorKind::Timeout, format!("handler took longer than {:?}", self.limit));
        Expiry { error, seen_by_itself: false }
    }
}

impl Middleware for Timeout {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        next.run_step(*self, message)
    }

    fn __built_in(&self) -> Option<BuiltIn> {
        Some(BuiltIn::new(*self))
    }
}

/// [`Timeout::new`]`(limit)`, for attribute lists: `#[handler(middleware = [timeout(Duration::from_secs(5))])]`.
pub fn timeout(limit: Duration) -> Timeout {
    Timeout::new(limit)
}
