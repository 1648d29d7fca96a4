//! Redis: the Streams backend [`RedisPubSub`], the [`RedisDedupStore`] that lets
//! [`Deduplicator`](crate::middleware::Deduplicator)s of several processes share their keys, and
//! the [`RedisAttemptStore`] that lets [`CountAttempts`](crate::middleware::CountAttempts) layers
//! share their counts (`redis` feature).

mod attempts;
mod config;
mod dedup;
mod delay;
mod entry;
mod flow;
mod group;
mod scripts;
mod shared;
mod solo;
mod streams;

pub use self::attempts::RedisAttemptStore;
pub use self::config::{RedisConfig, RedisConsumer, Trim};
pub use self::dedup::RedisDedupStore;
pub use self::delay::RedisDelayStore;
pub use self::streams::RedisPubSub;
