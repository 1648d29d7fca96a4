//! [`CountAttempts`]: counts deliveries in an [`AttemptStore`], for backends that count none (or
//! count only in one process).

use std::collections::HashMap;
use std::fmt::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use futures_core::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::chain::{Middleware, Next};
use super::step::{BuiltIn, Kind};
use crate::error::Result;
use crate::handler::HandlerResult;
use crate::message::Message;
use crate::pubsub::OpFuture;
pub use crate::store::AttemptStore;

/// Counts each delivery of a message in an [`AttemptStore`] and tells the layers inside it, and
/// the handler's `Attempt`, that count (or the backend's, when that is higher).
///
/// Place it outside the layers that decide on attempts ([`RedeliveryCap`](super::RedeliveryCap),
/// [`PoisonQueue::after_deliveries`](super::PoisonQueue::after_deliveries)). It is what lets them
/// run on a backend whose [`Features::attempts`](crate::pubsub::Features::attempts) is
/// `Unknown` (the router refuses them there otherwise), and what makes their count survive a
/// restart on a backend that counts in the process (`AtLeast`: Kafka, classic RabbitMQ queues,
/// MQTT): with a store shared by every consumer of the group
/// (`SqlAttemptStore`, `RedisAttemptStore`), a message that
/// crashes its consumer each time still reaches the cap, on whichever process it lands.
///
/// ```
/// use millstream::middleware::{CountAttempts, RedeliveryCap};
///
/// // Counted in this process; a `SqlAttemptStore` or `RedisAttemptStore` shares the counts.
/// let app = millstream::App::new().layer(CountAttempts::in_memory()).layer(RedeliveryCap::new(5));
/// # let _ = app;
/// ```
///
/// # What it costs and keeps
/// One store round trip before the handler runs, and one more when the message is done with. The
/// key is the handler's name and the message id, so each handler counts its own deliveries. A
/// count is forgotten once the message is done with: when the layers inside succeed (the message
/// is acked) or fail permanently (it goes to the poison topic, or is rejected). A transient failure
/// keeps it (the message is nacked and comes back). A message not delivered again within the
/// [`ttl`](Self::ttl) (default one day) starts again at 1. If the store cannot be reached, the
/// handler does not run and the message is nacked, so a cap is never skipped.
///
/// A failure after the layers inside (publishing the handler's outputs) nacks a message whose
/// count was already forgotten: its next delivery counts from 1.
#[derive(Clone)]
pub struct CountAttempts {
    store: Arc<dyn AttemptStore>,
    ttl: Duration,
}

impl CountAttempts {
    /// Counts in `store`.
    pub fn new(store: Arc<dyn AttemptStore>) -> Self {
        CountAttempts { store, ttl: Duration::from_secs(24 * 3600) }
    }

    /// Counts in a [`MemoryAttemptStore`]: redeliveries to this process only, lost on restart.
    pub fn in_memory() -> Self {
        Self::new(Arc::new(MemoryAttemptStore::new()))
    }

    /// How long a count is kept after a delivery (default one day).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

/// The store key of a message in a handler: `{handler}:{message id}`.
fn key_of(handler: &str, message: &Message) -> String {
    let mut key = String::with_capacity(handler.len() + 1 + 36);
    let _ = write!(key, "{handler}:{}", message.id());
    key
}

impl Middleware for CountAttempts {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        let this = self.clone();
        Box::pin(async move {
            let key = key_of(next.handler_name(), &message);
            let counted = this
                .store
                .record(&key, this.ttl)
                .await
                .map_err(|error| error.context("counting the delivery's attempt"))?;
            let attempt = counted.max(next.attempt());
            let result =
                next.with_attempt(attempt).run(message).await.map_err(|e| e.with_counted_attempt(attempt));
            let done = match &result {
                Ok(_) => true,
                Err(error) => error.is_permanent(),
            };
            if done {
                let forgotten: Result<()> = this.store.forget(&key).await;
                if let Err(error) = forgotten {
                    // The count expires with its ttl.
                    tracing::warn!(%error, %key, "CountAttempts could not forget a settled message's count");
                }
            }
            result
        })
    }

    fn __built_in(&self) -> Option<BuiltIn> {
        Some(BuiltIn(Kind::CountsAttempts))
    }
}

impl fmt::Debug for CountAttempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountAttempts").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// An in-process [`AttemptStore`]: counts the deliveries to this process, lost on restart.
/// Expired counts are swept as new ones arrive.
#[derive(Default)]
pub struct MemoryAttemptStore {
    counts: Mutex<MemoryCounts>,
}

#[derive(Default)]
struct MemoryCounts {
    /// Deliveries and expiry per key.
    keys: HashMap<Box<str>, (u32, Instant)>,
    last_sweep: Option<Instant>,
}

impl MemoryAttemptStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys it holds (expired ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.counts.lock().keys.len()
    }

    /// Whether it holds no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AttemptStore for MemoryAttemptStore {
    fn record<'a>(&'a self, key: &'a str, ttl: Duration) -> OpFuture<'a, u32> {
        let now = Instant::now();
        let until = now.checked_add(ttl).unwrap_or(now + Duration::from_secs(1_000 * 365 * 24 * 3600));
        let mut counts = self.counts.lock();
        // Sweep at most once per ttl, so the map stays bounded by what one window holds.
        if counts.last_sweep.is_none_or(|t| now.duration_since(t) >= ttl) {
            counts.keys.retain(|_, (_, expires)| *expires > now);
            counts.last_sweep = Some(now);
        }
        let count = match counts.keys.get_mut(key) {
            Some((count, expires)) => {
                *count = if *expires > now { count.saturating_add(1) } else { 1 };
                *expires = until;
                *count
            }
            None => {
                counts.keys.insert(key.into(), (1, until));
                1
            }
        };
        OpFuture::ready(Ok(count))
    }

    fn forget<'a>(&'a self, key: &'a str) -> OpFuture<'a> {
        self.counts.lock().keys.remove(key);
        OpFuture::ready(Ok(()))
    }
}

impl fmt::Debug for MemoryAttemptStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryAttemptStore").field("keys", &self.len()).finish()
    }
}
