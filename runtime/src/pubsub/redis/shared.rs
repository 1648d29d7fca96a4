//! What a [`RedisPubSub`](super::RedisPubSub) shares with its subscriptions: the client, the
//! publishing connection, the settings, and the few commands both sides send.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Value};
use tokio_util::sync::CancellationToken;

use super::config::{RedisConfig, Trim};
use super::entry::{self, StreamId};
use super::scripts;
use crate::error::{Error, Result};

/// The state of one pub/sub, shared by its clones and its subscriptions.
pub(super) struct Inner {
    pub(super) client: redis::Client,
    pub(super) manager: ConnectionManager,
    pub(super) config: RedisConfig,
    /// The URL with its password hidden.
    pub(super) url: String,
    /// The server's address, for consumer slots.
    pub(super) server: String,
    pub(super) consumer_base: String,
    pub(super) max_payload: usize,
    pub(super) cancel: CancellationToken,
    pub(super) trim_cancel: CancellationToken,
    pub(super) trimmed: Mutex<HashSet<String>>,
    pub(super) publisher_closed: AtomicBool,
    pub(super) subscriber_closed: AtomicBool,
}

pub(super) fn redis_error(error: redis::RedisError, what: impl fmt::Display) -> Error {
    Error::backend(error).context(format!("redis: {what}"))
}

impl Inner {
    pub(super) fn stream_key(&self, topic: &str) -> String {
        let mut key = String::with_capacity(self.config.key_prefix.len() + topic.len());
        key.push_str(&self.config.key_prefix);
        key.push_str(topic);
        key
    }

    /// A connection of its own for one subscription's blocking reads, and its client id (0 if
    /// the server would not say), with which `CLIENT UNBLOCK` ends a read when the subscription
    /// ends.
    pub(super) async fn reader_connection(&self) -> Result<(MultiplexedConnection, i64)> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.config.response_timeout)
            .set_response_timeout(self.config.block + self.config.response_timeout);
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| redis_error(e, format!("connecting to {}", self.url)))?;
        let id = redis::cmd("CLIENT").arg("ID").query_async::<i64>(&mut connection).await.unwrap_or(0);
        Ok((connection, id))
    }

    /// Creates `group` on `key` at `start` unless it exists (and the stream, if need be).
    pub(super) async fn create_group(&self, key: &str, group: &str, start: &str) -> Result<()> {
        let reply = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(group)
            .arg(start)
            .arg("MKSTREAM")
            .query_async::<Value>(&mut self.manager.clone())
            .await;
        match reply {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            Err(error) => Err(redis_error(error, format!("creating the group {group:?} on {key:?}"))),
        }
    }

    /// The id of the stream's last entry (`0-0` when it is empty or absent).
    pub(super) async fn last_id(&self, key: &str) -> Result<StreamId> {
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.manager.clone())
            .await
            .map_err(|e| redis_error(e, "XREVRANGE"))?;
        Ok(entry::entries("XREVRANGE", reply)?.first().map_or(StreamId::ZERO, |e| e.id))
    }

    pub(super) async fn trim(&self, topic: &str, trim: Trim) -> Result<u64> {
        let (mode, value) = match trim {
            Trim::MaxLen(n) => ("maxlen", n),
            Trim::MaxAge(age) => ("maxage", age.as_millis() as u64),
        };
        let reply: Value = redis::cmd("EVAL")
            .arg(scripts::TRIM)
            .arg(1)
            .arg(self.stream_key(topic))
            .arg(mode)
            .arg(value)
            .query_async(&mut self.manager.clone())
            .await
            .map_err(|e| redis_error(e, "trimming"))?;
        Ok(u64::try_from(entry::int("trim", &reply)?).unwrap_or(0))
    }

    pub(super) fn close_if_done(&self) {
        if self.publisher_closed.load(Ordering::Acquire) && self.subscriber_closed.load(Ordering::Acquire) {
            self.trim_cancel.cancel();
        }
    }
}
