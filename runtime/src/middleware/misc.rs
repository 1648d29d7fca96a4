//! Small middleware: [`InstantAck`], [`DelayOnNack`], [`IgnoreErrors`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_core::future::BoxFuture;

use super::fused::{call_single, Step};
use super::{FusedStep, Middleware, Next};
use crate::error::Error;
use crate::handler::HandlerResult;
use crate::message::Message;

/// Acks each message as soon as it arrives, before the handler runs: more throughput, at the
/// cost of at-most-once delivery (a crash or failure loses the message). The router sees this
/// layer in a handler's chain and acks first; outputs are still published after the handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct InstantAck;

impl Middleware for InstantAck {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        next.run(message)
    }

    fn acks_instantly(&self) -> bool {
        true
    }

    fn fused_step(&self) -> Option<FusedStep> {
        Some(FusedStep(Step::Pass))
    }
}

/// Asks the backend to wait before redelivering a failed message: the delay grows with the
/// attempt number (`base × 2^(attempt-1)`, capped at `max`). Backends that cannot delay
/// redeliver at once.
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

impl Middleware for DelayOnNack {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        call_single(Step::DelayOnNack(*self), message, next)
    }

    fn fused_step(&self) -> Option<FusedStep> {
        Some(FusedStep(Step::DelayOnNack(*self)))
    }
}

type Predicate = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// Treats some errors as success: the message is acked and nothing is published.
#[derive(Clone)]
pub struct IgnoreErrors {
    predicate: Predicate,
}

impl IgnoreErrors {
    /// Ignores errors for which `predicate` is true.
    pub fn when(predicate: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        IgnoreErrors { predicate: Arc::new(predicate) }
    }

    /// Ignores errors whose kind is one of `kinds`.
    pub fn kinds(kinds: impl IntoIterator<Item = crate::error::ErrorKind>) -> Self {
        let kinds: Vec<_> = kinds.into_iter().collect();
        Self::when(move |e| kinds.contains(&e.kind()))
    }

    /// Whether `error` is one this layer turns into success.
    pub(super) fn ignores(&self, error: &Error) -> bool {
        (self.predicate)(error)
    }
}

impl Middleware for IgnoreErrors {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        call_single(Step::Ignore(self.clone()), message, next)
    }

    fn fused_step(&self) -> Option<FusedStep> {
        Some(FusedStep(Step::Ignore(self.clone())))
    }
}

impl fmt::Debug for IgnoreErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IgnoreErrors")
    }
}
