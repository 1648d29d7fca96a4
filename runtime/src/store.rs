//! Stores that backends offer to the layers above them, each kept in memory, in the SQL backend's
//! database or in Redis: the [`DedupStore`] behind the
//! [`Deduplicator`](crate::middleware::Deduplicator) and the [`AttemptStore`] behind
//! [`CountAttempts`](crate::middleware::CountAttempts).
//!
//! The traits sit on the same floor as the pub/sub traits, below the backends that implement
//! them and the middleware that uses them.

use std::time::Duration;

use crate::op::OpFuture;

/// Remembers keys for a while, to deduplicate across processes when shared. The `conformance`
/// feature's `check_dedup_store` checks a store against this contract.
///
/// A duplicate insert does not extend a key's window.
pub trait DedupStore: Send + Sync + 'static {
    /// Records `key` for `ttl` and says whether it was new (`true`) or seen within its window.
    fn insert_if_new<'a>(&'a self, key: &'a str, ttl: Duration) -> OpFuture<'a, bool>;

    /// Forgets `key` (the handler failed, so a redelivery must go through).
    fn remove<'a>(&'a self, key: &'a str) -> OpFuture<'a>;
}

/// Counts the deliveries of messages, for the [`CountAttempts`](crate::middleware::CountAttempts)
/// layer on a backend that counts none, or only in one process
/// ([`Features::attempts`](crate::pubsub::Features::attempts)). Shared by several processes (in
/// the SQL backend's database or in Redis), it counts the deliveries of all of them, and survives
/// their restarts: a message that crashes its consumer still reaches a cap. The `conformance`
/// feature's `check_attempt_store` checks a store against this contract.
pub trait AttemptStore: Send + Sync + 'static {
    /// Counts one more delivery of `key` and returns its deliveries, this one included (1 for a
    /// key the store does not hold). The count is kept for `ttl` after this delivery; a key
    /// delivered again later starts at 1. Concurrent records of one key each count.
    fn record<'a>(&'a self, key: &'a str, ttl: Duration) -> OpFuture<'a, u32>;

    /// Forgets `key` (its message was settled for good: acked, or sent to a poison topic).
    fn forget<'a>(&'a self, key: &'a str) -> OpFuture<'a>;
}
