//! [`RedisDedupStore`]: a [`DedupStore`] kept in Redis, so deduplication holds across processes.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::error::{Error, ErrorKind, Result};
use crate::pubsub::OpFuture;
use crate::store::DedupStore;

/// The key prefix used unless [`RedisDedupStore::with_prefix`] sets another.
const DEFAULT_PREFIX: &str = "millstream:dedup:";

/// The longest window sent to Redis, in milliseconds: Redis rejects an expiry that overflows its
/// clock, and this (about 146 million years) stays far from that.
const MAX_TTL_MS: u64 = (i64::MAX / 2) as u64;

/// A [`DedupStore`] in Redis: every process whose
/// [`Deduplicator`](crate::middleware::Deduplicator) uses a store on the same server (and with the same
/// prefix) sees the same keys, so a message is handled once across all of them within the window.
///
/// Each key is one Redis string, `prefix + key`, that expires with its window:
///
/// - [`insert_if_new`](DedupStore::insert_if_new) is one atomic `SET <prefix+key> 1 NX PX <ttl>`
///   (the window rounded up to whole milliseconds, at least 1). `NX` leaves an existing key
///   alone, so a duplicate never extends the window, and of concurrent inserts exactly one wins;
/// - [`remove`](DedupStore::remove) is `DEL <prefix+key>`.
///
/// The connection is a [`redis::aio::ConnectionManager`]: cloned per operation (cheap, one
/// multiplexed connection underneath) and reconnecting by itself after the server goes away.
/// Commands are not retried: one in flight when the connection drops, or waiting on a reconnection
/// that fails, returns a transient [`ErrorKind::Backend`] error, and the next operation starts a
/// new attempt, so the store recovers once the server is back. Meanwhile a failed insert fails the
/// message without calling its handler (it is nacked and redelivered); a failed remove is only
/// logged by the [`Deduplicator`](crate::middleware::Deduplicator), so that key keeps skipping redeliveries
/// until its window ends.
///
/// ```no_run
/// # async fn run() -> millstream::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use millstream::middleware::{Deduplicator, RedisDedupStore};
///
/// let store = RedisDedupStore::connect("redis://127.0.0.1:6379").await?.with_prefix("orders:dedup:");
/// let dedup = Deduplicator::new(Duration::from_secs(600)).store(Arc::new(store));
/// # let _ = dedup;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisDedupStore {
    manager: ConnectionManager,
    prefix: Cow<'static, str>,
}

impl RedisDedupStore {
    /// How long [`connect`](RedisDedupStore::connect)'s connection waits for a reply.
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

    /// How long [`connect`](RedisDedupStore::connect)'s connection waits to connect.
    pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

    /// Connects to the Redis server at `url` (`redis://[:password@]host[:port][/db]`) through a
    /// [`ConnectionManager`], which reconnects by itself after the server goes away. A command
    /// waits at most [`RESPONSE_TIMEOUT`](Self::RESPONSE_TIMEOUT) and a connection attempt at
    /// most [`CONNECTION_TIMEOUT`](Self::CONNECTION_TIMEOUT), so a hung server fails messages (they are redelivered) instead of
    /// stalling the handler; [`new`](RedisDedupStore::new) takes a manager with other limits.
    ///
    /// Fails with an [`ErrorKind::Backend`] error if the URL is invalid or the server cannot be
    /// reached (the manager first retries a few times, with backoff).
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Self::new(connect_manager(url, Self::RESPONSE_TIMEOUT, Self::CONNECTION_TIMEOUT).await?))
    }

    /// A store over an existing connection manager (to choose its timeouts and reconnection
    /// backoff with [`redis::aio::ConnectionManagerConfig`]).
    pub fn new(manager: ConnectionManager) -> Self {
        RedisDedupStore { manager, prefix: Cow::Borrowed(DEFAULT_PREFIX) }
    }

    /// Puts `prefix` in front of every key (the default is `millstream:dedup:`). Stores that
    /// should share keys must use the same prefix; different prefixes keep deduplicators apart.
    pub fn with_prefix(mut self, prefix: impl Into<Cow<'static, str>>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The prefix in front of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn redis_key(&self, key: &str) -> String {
        prefixed(&self.prefix, key)
    }
}

/// A connection manager for `url` with these timeouts: what the stores' `connect` opens.
pub(super) async fn connect_manager(
    url: &str,
    response: Duration,
    connection: Duration,
) -> Result<ConnectionManager> {
    let client = redis::Client::open(url).map_err(|e| backend(e, "invalid Redis URL"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(response)
        .set_connection_timeout(connection);
    ConnectionManager::new_with_config(client, config).await.map_err(|e| backend(e, "connecting to Redis"))
}

/// `prefix` + `key`, the Redis key of a store's key.
pub(super) fn prefixed(prefix: &str, key: &str) -> String {
    let mut full = String::with_capacity(prefix.len() + key.len());
    full.push_str(prefix);
    full.push_str(key);
    full
}

/// Whole milliseconds for `ttl`, rounded up, at least 1 and at most [`MAX_TTL_MS`].
pub(super) fn ttl_millis(ttl: Duration) -> u64 {
    let millis = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(u64::MAX).clamp(1, MAX_TTL_MS)
}

pub(super) fn backend(error: redis::RedisError, context: &str) -> Error {
    Error::backend(error).context(context)
}

impl DedupStore for RedisDedupStore {
    fn insert_if_new<'a>(&'a self, key: &'a str, ttl: Duration) -> OpFuture<'a, bool> {
        let mut command = redis::cmd("SET");
        command.arg(self.redis_key(key)).arg(1).arg("NX").arg("PX").arg(ttl_millis(ttl));
        let mut connection = self.manager.clone();
        OpFuture::boxed(async move {
            let reply: Option<String> = command
                .query_async(&mut connection)
                .await
                .map_err(|e| backend(e, "redis dedup store: SET NX"))?;
            match reply.as_deref() {
                Some("OK") => Ok(true),
                None => Ok(false),
                Some(other) => Err(Error::new(
                    ErrorKind::Backend,
                    format!("redis dedup store: unexpected reply to SET NX: {other:?}"),
                )),
            }
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> OpFuture<'a> {
        let mut command = redis::cmd("DEL");
        command.arg(self.redis_key(key));
        let mut connection = self.manager.clone();
        OpFuture::boxed(async move {
            let _removed: u64 = command
                .query_async(&mut connection)
                .await
                .map_err(|e| backend(e, "redis dedup store: DEL"))?;
            Ok(())
        })
    }
}

impl fmt::Debug for RedisDedupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDedupStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_milliseconds() {
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_nanos(1)), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1_001)), 2);
        assert_eq!(ttl_millis(Duration::from_millis(300)), 300);
        assert_eq!(ttl_millis(Duration::from_secs(60)), 60_000);
        assert_eq!(ttl_millis(Duration::MAX), MAX_TTL_MS);
    }
}
