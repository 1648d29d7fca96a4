//! Redis: the [`RedisDedupStore`] that lets [`Deduplicator`](crate::middleware::Deduplicator)s of
//! several processes share their keys.

mod dedup;

pub use self::dedup::RedisDedupStore;
