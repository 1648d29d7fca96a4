//! Chaos middleware for resilience tests: [`RandomFail`] and [`RandomPanic`].

use futures_core::future::BoxFuture;

use super::chain::{Middleware, Next};
use crate::error::Error;
use crate::handler::HandlerResult;
use crate::message::Message;

/// Fails a fraction of calls (transiently) before they reach the handler. For tests only.
#[derive(Clone, Copy, Debug)]
pub struct RandomFail {
    probability: f64,
}

impl RandomFail {
    /// Fails with `probability` (0 to 1).
    pub fn new(probability: f64) -> Self {
        RandomFail { probability: probability.clamp(0.0, 1.0) }
    }
}

impl Middleware for RandomFail {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        if fastrand::f64() < self.probability {
            return Box::pin(std::future::ready(Err(Error::msg("chaos: random failure"))));
        }
        next.run(message)
    }
}

/// Panics in a fraction of calls before they reach the handler. For tests only.
#[derive(Clone, Copy, Debug)]
pub struct RandomPanic {
    probability: f64,
}

impl RandomPanic {
    /// Panics with `probability` (0 to 1).
    pub fn new(probability: f64) -> Self {
        RandomPanic { probability: probability.clamp(0.0, 1.0) }
    }
}

impl Middleware for RandomPanic {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        let panic = fastrand::f64() < self.probability;
        Box::pin(async move {
            if panic {
                panic!("chaos: random panic");
            }
            next.run(message).await
        })
    }
}
