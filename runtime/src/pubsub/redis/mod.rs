//! Redis: the Streams backend [`RedisPubSub`] and the [`RedisDedupStore`] that lets
//! [`Deduplicator`](crate::middleware::Deduplicator)s of several processes share their keys
//! (`redis` feature).

mod config;
mod dedup;
mod entry;
mod flow;
mod group;
mod scripts;
mod shared;
mod solo;
mod streams;

pub use self::config::{RedisConfig, RedisConsumer, Trim};
pub use self::dedup::RedisDedupStore;
pub use self::streams::RedisPubSub;
