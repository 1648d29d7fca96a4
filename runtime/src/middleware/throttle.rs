//! [`Throttle`]: a rate limit on handler calls.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_core::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::chain::{Middleware, Next};
use crate::handler::HandlerResult;
use crate::message::Message;

/// Limits how many messages per period reach the handler; the rest wait their turn (nothing is
/// dropped or failed). A token bucket: up to `burst` calls at once, refilled at `rate`.
///
/// [`Throttle::shared`] is one limit for every handler it is attached to (a downstream API's
/// quota); [`Throttle::per_handler`] gives each handler its own.
///
/// A clone is the same limit (it shares the buckets). Changing a setting of a clone makes it a
/// limit of its own, with fresh buckets; the original keeps its settings.
#[derive(Clone)]
pub struct Throttle {
    inner: Arc<Inner>,
}

struct Inner {
    interval: Duration,
    burst: u32,
    per_handler: bool,
    buckets: Mutex<HashMap<Box<str>, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    /// The instant at which the bucket is empty again (a "theoretical arrival time").
    next_free: Instant,
}

impl Throttle {
    fn build(count: u32, period: Duration, per_handler: bool) -> Self {
        assert!(count > 0, "a throttle must allow at least one call per period");
        Throttle {
            inner: Arc::new(Inner {
                interval: period / count,
                burst: 1,
                per_handler,
                buckets: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// `count` calls per `period`, one limit shared by every handler it is attached to.
    pub fn shared(count: u32, period: Duration) -> Self {
        Self::build(count, period, false)
    }

    /// `count` calls per `period` for each handler separately.
    pub fn per_handler(count: u32, period: Duration) -> Self {
        Self::build(count, period, true)
    }

    /// Allows bursts of up to `burst` calls without waiting (default 1).
    pub fn burst(mut self, burst: u32) -> Self {
        let burst = burst.max(1);
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.burst = burst,
            None => {
                let Inner { interval, per_handler, .. } = *self.inner;
                let buckets = Mutex::new(HashMap::new());
                self.inner = Arc::new(Inner { interval, burst, per_handler, buckets });
            }
        }
        self
    }

    /// Reserves a slot; returns how long to wait for it (GCRA: a theoretical arrival time per
    /// bucket, with a tolerance of `burst - 1` intervals).
    fn reserve(&self, handler: &str) -> Duration {
        let inner = &self.inner;
        let key = if inner.per_handler { handler } else { "" };
        let now = Instant::now();
        let mut buckets = inner.buckets.lock();
        let bucket = match buckets.get_mut(key) {
            Some(bucket) => bucket,
            None => buckets.entry(key.into()).or_insert(Bucket { next_free: now }),
        };
        let tolerance = inner.interval * (inner.burst - 1);
        let tat = bucket.next_free.max(now);
        let allowed_at = tat.checked_sub(tolerance).unwrap_or(now);
        bucket.next_free = tat + inner.interval;
        allowed_at.saturating_duration_since(now)
    }
}

impl Middleware for Throttle {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        let wait = self.reserve(next.handler_name());
        if wait.is_zero() {
            return next.run(message);
        }
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            next.run(message).await
        })
    }
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("interval", &self.inner.interval)
            .field("burst", &self.inner.burst)
            .field("per_handler", &self.inner.per_handler)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_on_a_shared_throttle_makes_a_limit_of_its_own() {
        let base = Throttle::shared(1, Duration::from_secs(1));
        let shared = base.clone();
        assert_eq!(shared.reserve("h"), Duration::ZERO);
        let bursty = base.clone().burst(3);
        // The original (and its clone) keep one bucket with burst 1: the next call waits.
        assert_eq!(base.reserve("h"), Duration::from_secs(1));
        // The derived one has its own bucket: three calls at once.
        for _ in 0..3 {
            assert_eq!(bursty.reserve("h"), Duration::ZERO);
        }
        assert_eq!(bursty.reserve("h"), Duration::from_secs(1));
        assert_eq!(base.inner.burst, 1);
    }
}
