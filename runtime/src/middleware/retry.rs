//! [`Retry`]: calls the rest of the chain again after a transient error, with exponential backoff
//! and jitter.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_core::future::BoxFuture;
use tokio::time::Instant;

use super::chain::{Middleware, Next};
use super::step::{BuiltIn, Cx, Expiry, Frame, Leave, Shape, Step};
use crate::error::{Error, ErrorKind};
use crate::handler::HandlerResult;
use crate::message::Message;

type Predicate = Arc<dyn Fn(&Error) -> bool + Send + Sync>;
type Hook = Arc<dyn Fn(&RetryEvent<'_>) + Send + Sync>;

/// Retries the rest of the chain in the process, without a redelivery.
///
/// The layers below and the handler see each retry as the next attempt (`Attempt` 2 on the first
/// retry of a first delivery); layers above it see the delivery's attempt.
///
/// Permanent errors (decode failures, [`Error::permanent`]) are never retried. Each attempt can
/// get its own timeout ([`Retry::attempt_timeout`]): a slow first attempt does not eat the budget
/// of the next ones, a trap of timeouts placed outside a retry loop.
///
/// ```
/// use std::time::Duration;
/// use millstream::middleware::Retry;
///
/// let retry = Retry::new(3)
///     .initial_interval(Duration::from_millis(50))
///     .max_elapsed(Duration::from_secs(10))
///     .attempt_timeout(Duration::from_secs(2))
///     .retry_if(|error| error.kind() != millstream::ErrorKind::Config);
/// # let _ = retry;
/// ```
///
/// A configured `Retry` is a value like any other: clone it and change the clone to derive a
/// variant (`base.clone().max_elapsed(..)`); the original is not affected.
#[derive(Clone)]
pub struct Retry {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    max_retries: u32,
    initial: Duration,
    multiplier: f64,
    max_interval: Duration,
    max_elapsed: Option<Duration>,
    jitter: f64,
    attempt_timeout: Option<Duration>,
    predicate: Option<Predicate>,
    on_retry: Option<Hook>,
}

/// What an [`on_retry`](Retry::on_retry) hook is told before each retry.
#[derive(Debug)]
pub struct RetryEvent<'a> {
    /// The retry about to run (1 for the first retry).
    pub retry: u32,
    /// The error of the attempt that failed.
    pub error: &'a Error,
    /// How long the retry waits before running.
    pub delay: Duration,
    /// The handler.
    pub handler: &'a str,
}

impl Retry {
    /// Up to `max_retries` retries after the first attempt; backoff from 100 ms doubling up to
    /// 10 s, ±20 % jitter, no elapsed-time limit.
    pub fn new(max_retries: u32) -> Self {
        Retry {
            inner: Arc::new(Inner {
                max_retries,
                initial: Duration::from_millis(100),
                multiplier: 2.0,
                max_interval: Duration::from_secs(10),
                max_elapsed: None,
                jitter: 0.2,
                attempt_timeout: None,
                predicate: None,
                on_retry: None,
            }),
        }
    }

    /// Changes the settings; a `Retry` that shares them with a clone gets a copy of its own.
    fn edit(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        f(Arc::make_mut(&mut self.inner));
        self
    }

    /// The wait before the first retry.
    pub fn initial_interval(self, interval: Duration) -> Self {
        self.edit(|i| i.initial = interval)
    }

    /// How much each wait grows (default 2).
    pub fn multiplier(self, multiplier: f64) -> Self {
        self.edit(|i| i.multiplier = multiplier.max(1.0))
    }

    /// The longest wait between two attempts (default 10 s).
    pub fn max_interval(self, interval: Duration) -> Self {
        self.edit(|i| i.max_interval = interval)
    }

    /// Gives up once this much time has passed since the first attempt (no retry would start
    /// after it).
    pub fn max_elapsed(self, limit: Duration) -> Self {
        self.edit(|i| i.max_elapsed = Some(limit))
    }

    /// Randomises each wait by ±`fraction` (0 to 1, default 0.2) so that many consumers do not
    /// retry in lockstep.
    pub fn jitter(self, fraction: f64) -> Self {
        self.edit(|i| i.jitter = fraction.clamp(0.0, 1.0))
    }

    /// A timeout for each attempt, fresh every time (counted, like [`Timeout`](super::Timeout)'s,
    /// from the first time the attempt waits).
    pub fn attempt_timeout(self, timeout: Duration) -> Self {
        self.edit(|i| i.attempt_timeout = Some(timeout))
    }

    /// Retries only errors for which `predicate` is true (permanent errors never are).
    pub fn retry_if(self, predicate: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.edit(|i| i.predicate = Some(Arc::new(predicate)))
    }

    /// Called before each retry (logging, metrics).
    pub fn on_retry(self, hook: impl Fn(&RetryEvent<'_>) + Send + Sync + 'static) -> Self {
        self.edit(|i| i.on_retry = Some(Arc::new(hook)))
    }

    /// The wait before retry number `retry` (1-based), jitter included.
    pub fn backoff(&self, retry: u32) -> Duration {
        let i = &self.inner;
        let exponent = retry.saturating_sub(1).min(64) as i32;
        let base = (i.initial.as_secs_f64() * i.multiplier.powi(exponent)).min(i.max_interval.as_secs_f64());
        let factor = if i.jitter > 0.0 { 1.0 + i.jitter * (fastrand::f64() * 2.0 - 1.0) } else { 1.0 };
        Duration::from_secs_f64((base * factor).max(0.0))
    }

    fn retryable(&self, error: &Error) -> bool {
        !error.is_permanent() && self.inner.predicate.as_ref().is_none_or(|p| p(error))
    }

    /// The wait before the next retry, after `done` retries ended in `error`; `None` when there
    /// is no next retry (the budget or the time is used up, or the error is not retried).
    /// `started` is when the first attempt started (known when there is an elapsed-time limit).
    fn next_delay(&self, error: &Error, done: u32, started: Option<Instant>) -> Option<Duration> {
        if done >= self.inner.max_retries || !self.retryable(error) {
            return None;
        }
        let delay = self.backoff(done + 1);
        match (self.inner.max_elapsed, started) {
            (Some(limit), Some(started)) if started.elapsed() + delay > limit => None,
            _ => Some(delay),
        }
    }
}

/// The retry loop, as a step of the engine: leaving with a retryable error, it asks for the
/// steps inside to run again after the backoff, as the next attempt.
impl Step for Retry {
    fn shape(&self) -> Shape {
        Shape {
            keeps_message: true,
            deadline: self.inner.attempt_timeout,
            reads_clock: self.inner.max_elapsed.is_some(),
            ..Shape::default()
        }
    }

    fn leave(&self, outcome: &mut HandlerResult, frame: &Frame, cx: &Cx<'_>) -> Leave {
        let Err(error) = outcome else { return Leave::Pass };
        let Some(delay) = self.next_delay(error, frame.reruns, frame.entered) else { return Leave::Pass };
        let retry = frame.reruns + 1;
        let handler = &*cx.route.name;
        if let Some(hook) = &self.inner.on_retry {
            hook(&RetryEvent { retry, error, delay, handler });
        }
        tracing::debug!(handler, retry, ?delay, %error, "retrying");
        Leave::Rerun(delay)
    }

    /// The per-attempt timeout passed: the retry itself sees the error (and may retry it).
    fn expired(&self) -> Expiry {
        let limit = self.inner.attempt_timeout.unwrap_or_default();
        let error = Error::new(ErrorKind::Timeout, format!("attempt took longer than {limit:?}"));
        Expiry { error, seen_by_itself: true }
    }
}

impl Middleware for Retry {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        next.run_step(self.clone(), message)
    }

    fn __built_in(&self) -> Option<BuiltIn> {
        Some(BuiltIn::new(self.clone()))
    }
}

/// [`Retry::new`]`(max_retries)`, for attribute lists: `#[handler(middleware = [retry(3)])]`.
pub fn retry(max_retries: u32) -> Retry {
    Retry::new(max_retries)
}

impl fmt::Debug for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Retry")
            .field("max_retries", &i.max_retries)
            .field("initial", &i.initial)
            .field("multiplier", &i.multiplier)
            .field("max_interval", &i.max_interval)
            .field("max_elapsed", &i.max_elapsed)
            .field("jitter", &i.jitter)
            .field("attempt_timeout", &i.attempt_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped_and_jittered() {
        let r = Retry::new(10).initial_interval(Duration::from_millis(100)).jitter(0.0);
        assert_eq!(r.backoff(1), Duration::from_millis(100));
        assert_eq!(r.backoff(2), Duration::from_millis(200));
        assert_eq!(r.backoff(4), Duration::from_millis(800));
        assert_eq!(r.backoff(30), Duration::from_secs(10));
        let j = Retry::new(10).initial_interval(Duration::from_millis(1000)).jitter(0.5);
        for _ in 0..100 {
            let d = j.backoff(1);
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1500), "{d:?}");
        }
    }

    #[test]
    fn permanent_errors_and_the_predicate_stop_retries() {
        let r = Retry::new(3).retry_if(|e| e.message() != "fatal");
        assert!(r.retryable(&Error::msg("flaky")));
        assert!(!r.retryable(&Error::msg("fatal")));
        assert!(!r.retryable(&Error::permanent("bad input")));
    }

    #[test]
    fn a_variant_derived_from_a_shared_retry_leaves_the_original_alone() {
        let base = Retry::new(3)
            .initial_interval(Duration::from_millis(100))
            .jitter(0.0)
            .retry_if(|e| e.message() != "fatal");
        let shared = base.clone(); // a second owner of the settings, as a router holding it is
        let fast = base.clone().initial_interval(Duration::from_millis(1)).on_retry(|_| {});
        assert_eq!(fast.backoff(1), Duration::from_millis(1));
        assert_eq!(shared.backoff(1), Duration::from_millis(100), "the original keeps its settings");
        assert_eq!(base.backoff(1), Duration::from_millis(100));
        assert!(fast.inner.on_retry.is_some() && shared.inner.on_retry.is_none());
        assert!(!fast.retryable(&Error::msg("fatal")), "the derived one keeps the predicate");
    }
}
