//! Stores that backends offer to the layers above them: the [`DedupStore`] behind the
//! [`Deduplicator`](crate::middleware::Deduplicator), kept in memory, in the SQL backend's database
//! or in Redis.
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
