//! [`Deduplicator`]: drops messages already handled within a time window.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_core::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Middleware, Next};
use crate::error::Result;
use crate::handler::{HandlerResult, Outputs};
use crate::message::Message;
use crate::pubsub::OpFuture;
pub use crate::store::DedupStore;

/// An in-process [`DedupStore`]; expired keys are swept as new ones arrive.
#[derive(Default)]
pub struct MemoryDedupStore {
    keys: Mutex<MemoryKeys>,
}

#[derive(Default)]
struct MemoryKeys {
    expiry: HashMap<Box<str>, Instant>,
    last_sweep: Option<Instant>,
}

impl MemoryDedupStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys it holds (expired ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.keys.lock().expiry.len()
    }

    /// Whether it holds no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl DedupStore for MemoryDedupStore {
    fn insert_if_new<'a>(&'a self, key: &'a str, ttl: Duration) -> OpFuture<'a, bool> {
        let now = Instant::now();
        let mut keys = self.keys.lock();
        // Sweep at most once per ttl, so the map stays bounded by what one window holds.
        if keys.last_sweep.is_none_or(|t| now.duration_since(t) >= ttl) {
            keys.expiry.retain(|_, until| *until > now);
            keys.last_sweep = Some(now);
        }
        let fresh = match keys.expiry.get_mut(key) {
            Some(until) if *until > now => false,
            Some(until) => {
                *until = now + ttl;
                true
            }
            None => {
                keys.expiry.insert(key.into(), now + ttl);
                true
            }
        };
        OpFuture::ready(Ok(fresh))
    }

    fn remove<'a>(&'a self, key: &'a str) -> OpFuture<'a> {
        self.keys.lock().expiry.remove(key);
        OpFuture::ready(Ok(()))
    }
}

impl fmt::Debug for MemoryDedupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryDedupStore").field("keys", &self.len()).finish()
    }
}

/// What identifies a duplicate.
#[derive(Clone, Debug)]
pub enum DedupKey {
    /// The message id.
    MessageId,
    /// A metadata entry (messages without it are never treated as duplicates).
    Metadata(String),
}

/// Acks a message whose key was handled within the window, without calling the handler: with an
/// at-least-once backend, this makes handling effectively once within the window. A key is kept
/// only if the handler succeeds; a failure forgets it, so the redelivery goes through.
#[derive(Clone)]
pub struct Deduplicator {
    store: Arc<dyn DedupStore>,
    key: DedupKey,
    window: Duration,
}

impl Deduplicator {
    /// Deduplicates by message id within `window`, in memory.
    pub fn new(window: Duration) -> Self {
        Deduplicator { store: Arc::new(MemoryDedupStore::new()), key: DedupKey::MessageId, window }
    }

    /// Uses a metadata entry as the key instead of the id.
    pub fn by_metadata(mut self, key: impl Into<String>) -> Self {
        self.key = DedupKey::Metadata(key.into());
        self
    }

    /// Keeps keys in `store` (shared between processes, for example).
    pub fn store(mut self, store: Arc<dyn DedupStore>) -> Self {
        self.store = store;
        self
    }

    fn key_of(&self, message: &Message) -> Option<String> {
        match &self.key {
            DedupKey::MessageId => Some(message.id().to_boxed_str().into_string()),
            DedupKey::Metadata(name) => message.metadata().get(name).map(str::to_owned),
        }
    }
}

impl Middleware for Deduplicator {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        let Some(key) = self.key_of(&message) else { return next.run(message) };
        let this = self.clone();
        Box::pin(async move {
            if !this.store.insert_if_new(&key, this.window).await? {
                tracing::debug!(handler = %next.handler_name(), %key, "duplicate skipped");
                return Ok(Outputs::new());
            }
            let result = next.run(message).await;
            if result.is_err() {
                let forget: Result<()> = this.store.remove(&key).await;
                if let Err(error) = forget {
                    tracing::warn!(%error, %key, "deduplicator could not forget a failed key");
                }
            }
            result
        })
    }
}

impl fmt::Debug for Deduplicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deduplicator").field("key", &self.key).field("window", &self.window).finish()
    }
}
