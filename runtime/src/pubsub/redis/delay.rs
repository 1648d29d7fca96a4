//! [`RedisDelayStore`]: delayed messages kept in Redis (a sorted set of due times and a hash of
//! messages per scope), across restarts and shared by every process that relays from it.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use redis::aio::ConnectionManager;

use super::dedup::{backend, connect_manager};
use crate::error::{Error, Result};
use crate::message::{Message, MessageId, Metadata};
use crate::pubsub::OpFuture;
use crate::store::{DelayStore, DelayedMessage, TakenMessage};

/// The key prefix used unless [`RedisDelayStore::with_prefix`] sets another.
const DEFAULT_PREFIX: &str = "millstream:delayed:";

/// Takes the due messages of a scope and leases them, atomically: `KEYS[1]` the sorted set
/// (score: when a message is next available, its due time or the end of its lease), `KEYS[2]`
/// the hash of messages; `ARGV`: now, limit, lease end. Returns `seq, record, seq, record, ..`.
/// A member whose record is gone (deleted under it) is dropped.
const TAKE: &str = r"
local seqs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, seq in ipairs(seqs) do
  local record = redis.call('HGET', KEYS[2], seq)
  if record then
    redis.call('ZADD', KEYS[1], ARGV[3], seq)
    out[#out + 1] = seq
    out[#out + 1] = record
  else
    redis.call('ZREM', KEYS[1], seq)
  end
end
return out
";

/// A [`DelayStore`] in Redis. Per scope, two keys (hash-tagged together for Redis Cluster):
/// `{prefix}{d:scope}:due`, a sorted set whose members are the messages' numbers (zero-padded,
/// so that equal scores sort in scheduling order) scored by when each is next available, and
/// `{prefix}{d:scope}:msg`, a hash of the messages (due time, topic, id, metadata, payload);
/// numbers come from `{prefix}seq`. Scheduling writes both in one `MULTI`; taking is one Lua
/// script (select the due, move their score to the lease's end), so relays of several processes
/// take disjoint messages; `done` removes both in one `MULTI`.
///
/// Durable as the server is (its AOF or RDB settings); the connection reconnects by itself, as
/// the [`RedisDedupStore`](super::RedisDedupStore)'s.
///
/// ```no_run
/// # async fn run() -> millstream::Result<()> {
/// use millstream::pubsub::redis::RedisDelayStore;
/// let store = RedisDelayStore::connect("redis://127.0.0.1:6379").await?;
/// let app = millstream::App::from_registry().delays(store);
/// # let _ = app; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisDelayStore {
    manager: ConnectionManager,
    prefix: Cow<'static, str>,
}

impl RedisDelayStore {
    /// How long [`connect`](RedisDelayStore::connect)'s connection waits for a reply.
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

    /// How long [`connect`](RedisDelayStore::connect)'s connection waits to connect.
    pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

    /// Connects to the Redis server at `url` (`redis://[:password@]host[:port][/db]`) through a
    /// [`ConnectionManager`] that reconnects by itself, with the timeouts above.
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Self::new(connect_manager(url, Self::RESPONSE_TIMEOUT, Self::CONNECTION_TIMEOUT).await?))
    }

    /// A store over an existing connection manager.
    pub fn new(manager: ConnectionManager) -> Self {
        RedisDelayStore { manager, prefix: Cow::Borrowed(DEFAULT_PREFIX) }
    }

    /// Puts `prefix` in front of every key (default `millstream:delayed:`).
    pub fn with_prefix(mut self, prefix: impl Into<Cow<'static, str>>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The prefix in front of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn keys(&self, scope: &str) -> (String, String) {
        let prefix = &self.prefix;
        (format!("{prefix}{{d:{scope}}}:due"), format!("{prefix}{{d:{scope}}}:msg"))
    }
}

/// A message's number as a sorted-set member: zero-padded to sort as numbers do.
fn member(seq: u64) -> String {
    format!("{seq:020}")
}

/// A message as stored: due time, then topic, id and metadata (JSON pairs), each with its
/// length, then the payload.
fn encode(delayed: &DelayedMessage) -> Vec<u8> {
    let pairs: Vec<(&str, &str)> = delayed.message.metadata().iter().collect();
    let metadata = serde_json::to_vec(&pairs).expect("string pairs serialize");
    let id = delayed.message.id().to_string();
    let payload = delayed.message.payload();
    let mut out = Vec::with_capacity(20 + delayed.topic.len() + id.len() + metadata.len() + payload.len());
    out.put_u64(delayed.due_ms);
    for part in [delayed.topic.as_bytes(), id.as_bytes(), &metadata] {
        out.put_u32(u32::try_from(part.len()).unwrap_or(u32::MAX));
        out.put_slice(part);
    }
    out.put_slice(payload);
    out
}

fn decode(record: Vec<u8>) -> Result<DelayedMessage> {
    let corrupt = || Error::permanent("redis delay store: a stored message does not decode");
    let mut bytes = Bytes::from(record);
    if bytes.remaining() < 8 {
        return Err(corrupt());
    }
    let due_ms = bytes.get_u64();
    let mut parts = [Bytes::new(), Bytes::new(), Bytes::new()];
    for part in &mut parts {
        if bytes.remaining() < 4 {
            return Err(corrupt());
        }
        let len = bytes.get_u32() as usize;
        if bytes.remaining() < len {
            return Err(corrupt());
        }
        *part = bytes.split_to(len);
    }
    let [topic, id, metadata] = parts;
    let topic = String::from_utf8(topic.to_vec()).map_err(|_| corrupt())?;
    let id = MessageId::parse_ascii(&id).map_err(|_| corrupt())?;
    let metadata: Metadata = serde_json::from_slice::<Vec<(String, String)>>(&metadata)
        .map_err(|_| corrupt())?
        .into_iter()
        .collect();
    Ok(DelayedMessage { topic, message: Message::from_parts(id, metadata, bytes), due_ms })
}

impl DelayStore for RedisDelayStore {
    fn schedule<'a>(&'a self, scope: &'a str, messages: Vec<DelayedMessage>) -> OpFuture<'a> {
        let mut connection = self.manager.clone();
        OpFuture::boxed(async move {
            if messages.is_empty() {
                return Ok(());
            }
            let (due, msg) = self.keys(scope);
            let last: u64 = redis::cmd("INCRBY")
                .arg(format!("{}seq", self.prefix))
                .arg(messages.len())
                .query_async(&mut connection)
                .await
                .map_err(|e| backend(e, "redis delay store: INCRBY"))?;
            let first = last + 1 - messages.len() as u64;
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (i, delayed) in messages.iter().enumerate() {
                let seq = member(first + i as u64);
                pipe.cmd("HSET").arg(&msg).arg(&seq).arg(encode(delayed)).ignore();
                pipe.cmd("ZADD").arg(&due).arg(delayed.due_ms).arg(seq).ignore();
            }
            pipe.query_async::<()>(&mut connection)
                .await
                .map_err(|e| backend(e, "redis delay store: schedule"))
        })
    }

    fn take_due<'a>(
        &'a self,
        scope: &'a str,
        now_ms: u64,
        limit: usize,
        lease: Duration,
    ) -> OpFuture<'a, Vec<TakenMessage>> {
        let mut connection = self.manager.clone();
        OpFuture::boxed(async move {
            let (due, msg) = self.keys(scope);
            let (due, msg) = (&due, &msg);
            let until = now_ms.saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
            // (Sent whole, as the backend's other scripts: small, and run once per relay round.)
            let reply: Vec<Vec<u8>> = redis::cmd("EVAL")
                .arg(TAKE)
                .arg(2)
                .arg(due)
                .arg(msg)
                .arg(now_ms)
                .arg(limit)
                .arg(until)
                .query_async(&mut connection)
                .await
                .map_err(|e| backend(e, "redis delay store: take"))?;
            let mut taken = Vec::with_capacity(reply.len() / 2);
            let mut corrupt = Vec::new();
            let mut reply = reply.into_iter();
            while let (Some(member), Some(record)) = (reply.next(), reply.next()) {
                let seq = std::str::from_utf8(&member).ok().and_then(|s| s.parse().ok());
                match (seq, decode(record)) {
                    (Some(seq), Ok(delayed)) => taken.push(TakenMessage { seq, delayed }),
                    // Written by something else: it can never be published; it must not hold up
                    // the rest, so it is removed, loudly.
                    (_, result) => {
                        let member = String::from_utf8_lossy(&member).into_owned();
                        tracing::error!(%member, scope, error = ?result.err(), "redis delay store: a stored message does not decode; removing it");
                        corrupt.push(member);
                    }
                }
            }
            if !corrupt.is_empty() {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("ZREM")
                    .arg(due)
                    .arg(&corrupt)
                    .ignore()
                    .cmd("HDEL")
                    .arg(msg)
                    .arg(&corrupt)
                    .ignore();
                pipe.query_async::<()>(&mut connection)
                    .await
                    .map_err(|e| backend(e, "redis delay store: removing corrupt"))?;
            }
            taken.sort_by_key(|message| (message.delayed.due_ms, message.seq));
            Ok(taken)
        })
    }

    fn done<'a>(&'a self, scope: &'a str, seqs: &'a [u64]) -> OpFuture<'a> {
        let mut connection = self.manager.clone();
        OpFuture::boxed(async move {
            if seqs.is_empty() {
                return Ok(());
            }
            let (due, msg) = self.keys(scope);
            let members: Vec<String> = seqs.iter().map(|seq| member(*seq)).collect();
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("ZREM")
                .arg(&due)
                .arg(&members)
                .ignore()
                .cmd("HDEL")
                .arg(&msg)
                .arg(&members)
                .ignore();
            pipe.query_async::<()>(&mut connection).await.map_err(|e| backend(e, "redis delay store: done"))
        })
    }

    fn next_due<'a>(&'a self, scope: &'a str) -> OpFuture<'a, Option<u64>> {
        let mut connection = self.manager.clone();
        OpFuture::boxed(async move {
            let (due, _) = self.keys(scope);
            let first: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(due)
                .arg(0)
                .arg(0)
                .arg("WITHSCORES")
                .query_async(&mut connection)
                .await
                .map_err(|e| backend(e, "redis delay store: ZRANGE"))?;
            Ok(first.first().map(|(_, score)| score.max(0.0) as u64))
        })
    }

    fn count<'a>(&'a self, scope: &'a str) -> OpFuture<'a, u64> {
        let mut connection = self.manager.clone();
        OpFuture::boxed(async move {
            let (due, _) = self.keys(scope);
            redis::cmd("ZCARD")
                .arg(due)
                .query_async(&mut connection)
                .await
                .map_err(|e| backend(e, "redis delay store: ZCARD"))
        })
    }
}

impl fmt::Debug for RedisDelayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDelayStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips() {
        let message = Message::new("payload").with_key("k").with_header("a", "1");
        let delayed = DelayedMessage { topic: "orders".into(), message: message.clone(), due_ms: 42 };
        let back = decode(encode(&delayed)).unwrap();
        assert_eq!((back.topic.as_str(), back.due_ms), ("orders", 42));
        assert_eq!(back.message, message);
    }

    #[test]
    fn a_short_record_is_an_error() {
        assert!(decode(vec![0, 0, 0]).is_err());
        assert!(decode(vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, b'x']).is_err());
    }

    #[test]
    fn members_sort_as_numbers() {
        assert!(member(9) < member(10));
    }
}
