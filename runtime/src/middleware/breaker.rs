//! [`CircuitBreaker`]: stops calling a handler that keeps failing, for a cool-down.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_core::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::chain::{Middleware, Next};
use crate::error::{Error, ErrorKind};
use crate::handler::HandlerResult;
use crate::message::Message;

/// The state of a [`CircuitBreaker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls fail at once (transient, nacked with the remaining cool-down as a redelivery delay).
    Open,
    /// The cool-down is over: a limited number of trial calls go through; enough successes close
    /// the breaker, one failure opens it again.
    HalfOpen,
}

/// Opens after `failure_threshold` consecutive failures; while open, messages fail fast without
/// reaching the handler (so a broken downstream is not hammered); after `cool_down` it lets
/// `half_open_calls` trial calls through, and closes after `success_threshold` successes.
///
/// Permanent errors (bad input) say nothing about the downstream's health and are not counted.
/// One breaker can be shared by several handlers that call the same downstream.
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    failure_threshold: u32,
    success_threshold: u32,
    half_open_calls: u32,
    cool_down: Duration,
    state: Mutex<Counters>,
}

struct Counters {
    state: BreakerState,
    failures: u32,
    successes: u32,
    trials_in_flight: u32,
    opened_at: Instant,
    /// Counts the half-open periods, so that a call admitted in one period (or while closed)
    /// never moves the trial counters of a later one.
    half_open_epoch: u64,
}

/// A call the breaker let through; settles the breaker's counters exactly once, with the call's
/// result, or on drop if the call was cancelled (a half-open trial then frees its slot).
struct Admitted {
    breaker: CircuitBreaker,
    /// The half-open period this call is a trial of, if it is one.
    trial_of: Option<u64>,
    settled: bool,
}

impl Admitted {
    fn settle(mut self, result: &HandlerResult) {
        self.settled = true;
        self.breaker.record(result, self.trial_of);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Some(epoch) = self.trial_of {
            let mut c = self.breaker.inner.state.lock();
            if c.state == BreakerState::HalfOpen && c.half_open_epoch == epoch {
                c.trials_in_flight = c.trials_in_flight.saturating_sub(1);
            }
        }
    }
}

impl CircuitBreaker {
    /// Opens after `failure_threshold` consecutive failures, for `cool_down`; one trial call and
    /// one success close it.
    pub fn new(failure_threshold: u32, cool_down: Duration) -> Self {
        CircuitBreaker {
            inner: Arc::new(Inner {
                failure_threshold: failure_threshold.max(1),
                success_threshold: 1,
                half_open_calls: 1,
                cool_down,
                state: Mutex::new(Counters {
                    state: BreakerState::Closed,
                    failures: 0,
                    successes: 0,
                    trials_in_flight: 0,
                    opened_at: Instant::now(),
                    half_open_epoch: 0,
                }),
            }),
        }
    }

    /// Successes needed in half-open state to close (default 1); also allows that many trials.
    ///
    /// On a breaker shared with a clone, the result is a breaker of its own (closed, with fresh
    /// counters); the original keeps its settings.
    pub fn success_threshold(self, n: u32) -> Self {
        let mut own = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => {
                let fresh = CircuitBreaker::new(shared.failure_threshold, shared.cool_down);
                let mut inner = Arc::into_inner(fresh.inner).expect("a new breaker is not shared");
                inner.success_threshold = shared.success_threshold;
                inner.half_open_calls = shared.half_open_calls;
                inner
            }
        };
        own.success_threshold = n.max(1);
        own.half_open_calls = own.half_open_calls.max(n.max(1));
        CircuitBreaker { inner: Arc::new(own) }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        let mut counters = self.inner.state.lock();
        self.refresh(&mut counters);
        counters.state
    }

    fn refresh(&self, c: &mut Counters) {
        if c.state == BreakerState::Open && c.opened_at.elapsed() >= self.inner.cool_down {
            c.state = BreakerState::HalfOpen;
            c.successes = 0;
            c.trials_in_flight = 0;
            c.half_open_epoch += 1;
        }
    }

    /// Decides whether a call may go through; `Err(remaining cool-down)` if not.
    fn admit(&self) -> Result<Admitted, Duration> {
        let mut c = self.inner.state.lock();
        self.refresh(&mut c);
        let trial_of = match c.state {
            BreakerState::Closed => None,
            BreakerState::Open => return Err(self.inner.cool_down.saturating_sub(c.opened_at.elapsed())),
            BreakerState::HalfOpen if c.trials_in_flight < self.inner.half_open_calls => {
                c.trials_in_flight += 1;
                Some(c.half_open_epoch)
            }
            BreakerState::HalfOpen => return Err(Duration::ZERO),
        };
        Ok(Admitted { breaker: self.clone(), trial_of, settled: false })
    }

    fn record(&self, result: &HandlerResult, trial_of: Option<u64>) {
        let failed = matches!(result, Err(e) if !e.is_permanent());
        let mut c = self.inner.state.lock();
        // In half-open state only this period's trials count: a call let through earlier says
        // nothing about the downstream since the cool-down.
        if c.state == BreakerState::HalfOpen && trial_of != Some(c.half_open_epoch) {
            return;
        }
        match (c.state, failed) {
            (BreakerState::Closed, false) => c.failures = 0,
            (BreakerState::Closed, true) => {
                c.failures += 1;
                if c.failures >= self.inner.failure_threshold {
                    self.open(&mut c);
                }
            }
            (BreakerState::HalfOpen, false) => {
                c.trials_in_flight = c.trials_in_flight.saturating_sub(1);
                c.successes += 1;
                if c.successes >= self.inner.success_threshold {
                    c.state = BreakerState::Closed;
                    c.failures = 0;
                    tracing::info!("circuit breaker closed");
                }
            }
            (BreakerState::HalfOpen, true) => self.open(&mut c),
            (BreakerState::Open, _) => {}
        }
    }

    fn open(&self, c: &mut Counters) {
        c.state = BreakerState::Open;
        c.opened_at = Instant::now();
        c.failures = 0;
        c.successes = 0;
        c.trials_in_flight = 0;
        tracing::warn!(cool_down = ?self.inner.cool_down, "circuit breaker opened");
    }
}

impl Middleware for CircuitBreaker {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        let admitted = match self.admit() {
            Ok(admitted) => admitted,
            Err(remaining) => {
                let error = Error::new(ErrorKind::Handler, "circuit breaker is open").retry_after(remaining);
                return Box::pin(std::future::ready(Err(error)));
            }
        };
        Box::pin(async move {
            let result = next.run(message).await;
            admitted.settle(&result);
            result
        })
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .field("failure_threshold", &self.inner.failure_threshold)
            .field("cool_down", &self.inner.cool_down)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> HandlerResult {
        Err(Error::msg("downstream down"))
    }

    /// A breaker opened by one failure and past its cool-down: half-open.
    async fn half_open() -> CircuitBreaker {
        let breaker = CircuitBreaker::new(1, Duration::from_secs(10));
        breaker.admit().unwrap().settle(&failure());
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        breaker
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_trial_frees_its_slot() {
        let breaker = half_open().await;
        let trial = breaker.admit().expect("the one trial goes through");
        assert!(breaker.admit().is_err(), "only one trial at a time");
        drop(trial); // the handler's future was dropped (a timeout, a shutdown)
        let trial = breaker.admit().expect("the slot is free again");
        trial.settle(&Ok(Default::default()));
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_from_before_the_cool_down_does_not_decide_the_trial() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(10));
        let slow = breaker.admit().unwrap(); // admitted while closed, still running
        breaker.admit().unwrap().settle(&failure());
        breaker.admit().unwrap().settle(&failure());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        slow.settle(&Ok(Default::default()));
        assert_eq!(breaker.state(), BreakerState::HalfOpen, "only a trial may close it");
        let trial = breaker.admit().expect("the trial slot was never taken");
        trial.settle(&failure());
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn success_threshold_on_a_shared_breaker_makes_a_breaker_of_its_own() {
        let base = CircuitBreaker::new(1, Duration::from_secs(10));
        let shared = base.clone();
        let strict = base.clone().success_threshold(2);
        shared.admit().unwrap().settle(&failure());
        assert_eq!(base.state(), BreakerState::Open, "a clone is the same breaker");
        assert_eq!(strict.state(), BreakerState::Closed, "the derived one is a breaker of its own");
        assert_eq!((strict.inner.success_threshold, strict.inner.half_open_calls), (2, 2));
        assert_eq!(base.inner.success_threshold, 1);
    }
}
