//! [`RedisAttemptStore`]: an [`AttemptStore`] kept in Redis, so attempt counts hold across
//! processes and their restarts.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::dedup::{backend, connect_manager, prefixed, ttl_millis};
use crate::error::Result;
use crate::pubsub::OpFuture;
use crate::store::AttemptStore;

/// The key prefix used unless [`RedisAttemptStore::with_prefix`] sets another.
const DEFAULT_PREFIX: &str = "millstream:attempts:";

/// An [`AttemptStore`] in Redis: the [`CountAttempts`](crate::middleware::CountAttempts) layers of
/// every process using a store on the same server (and with the same prefix) count the same
/// deliveries.
///
/// Each key is one Redis integer, `prefix + key`, that expires `ttl` after its last delivery:
///
/// - [`record`](AttemptStore::record) is `INCR` and `PEXPIRE` in one `MULTI` transaction (atomic:
///   concurrent records each count, and a key never outlives its window); an expired key is gone,
///   so it counts from 1 again;
/// - [`forget`](AttemptStore::forget) is `DEL`.
///
/// The connection reconnects by itself, as the [`RedisDedupStore`](super::RedisDedupStore)'s: a
/// command that fails returns a transient error (the message is nacked, its handler not run).
///
/// ```no_run
/// # async fn run() -> millstream::Result<()> {
/// use std::sync::Arc;
/// use millstream::middleware::{CountAttempts, RedeliveryCap, RedisAttemptStore};
///
/// let store = RedisAttemptStore::connect("redis://127.0.0.1:6379").await?;
/// let app = millstream::App::new().layer(CountAttempts::new(Arc::new(store)))
///     .layer(RedeliveryCap::new(5));
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisAttemptStore {
    manager: ConnectionManager,
    prefix: Cow<'static, str>,
}

impl RedisAttemptStore {
    /// How long [`connect`](RedisAttemptStore::connect)'s connection waits for a reply.
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

    /// How long [`connect`](RedisAttemptStore::connect)'s connection waits to connect.
    pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

    /// Connects to the Redis server at `url` (`redis://[:password@]host[:port][/db]`) through a
    /// [`ConnectionManager`] that reconnects by itself, with the timeouts above;
    /// [`new`](RedisAttemptStore::new) takes a manager with other limits.
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Self::new(connect_manager(url, Self::RESPONSE_TIMEOUT, Self::CONNECTION_TIMEOUT).await?))
    }

    /// A store over an existing connection manager.
    pub fn new(manager: ConnectionManager) -> Self {
        RedisAttemptStore { manager, prefix: Cow::Borrowed(DEFAULT_PREFIX) }
    }

    /// Puts `prefix` in front of every key (the default is `millstream:attempts:`). Stores that
    /// should share counts must use the same prefix.
    pub fn with_prefix(mut self, prefix: impl Into<Cow<'static, str>>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The prefix in front of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl AttemptStore for RedisAttemptStore {
    fn record<'a>(&'a self, key: &'a str, ttl: Duration) -> OpFuture<'a, u32> {
        let key = prefixed(&self.prefix, key);
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("INCR").arg(&key).cmd("PEXPIRE").arg(&key).arg(ttl_millis(ttl)).ignore();
        let mut connection = self.manager.clone();
        OpFuture::boxed(async move {
            let (count,): (u64,) = pipe
                .query_async(&mut connection)
                .await
                .map_err(|e| backend(e, "redis attempt store: INCR"))?;
            Ok(u32::try_from(count).unwrap_or(u32::MAX))
        })
    }

    fn forget<'a>(&'a self, key: &'a str) -> OpFuture<'a> {
        let mut command = redis::cmd("DEL");
        command.arg(prefixed(&self.prefix, key));
        let mut connection = self.manager.clone();
        OpFuture::boxed(async move {
            let _removed: u64 = command
                .query_async(&mut connection)
                .await
                .map_err(|e| backend(e, "redis attempt store: DEL"))?;
            Ok(())
        })
    }
}

impl fmt::Debug for RedisAttemptStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAttemptStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}
