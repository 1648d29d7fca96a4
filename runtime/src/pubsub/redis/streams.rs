//! [`RedisPubSub`]: the pub/sub over Redis Streams.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Value};
use tokio_util::sync::CancellationToken;

use super::config::{default_consumer_base, RedisConfig, RedisConsumer, Trim};
use super::entry::{self, StreamId};
use super::flow::Slot;
use super::shared::{redis_error, Inner};
use super::{group, solo};
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::pubsub::{
    check_size, closed_error, Attempts, Features, OpFuture, Publisher, Settlement, StartFrom,
    SubscribeOptions, Subscriber, Subscription,
};

/// The Redis Streams pub/sub. Cheap to clone; clones share connections.
///
/// # Mapping
/// - A topic is a stream, the key `<key_prefix><topic>` ([`RedisConfig::key_prefix`], default
///   `millstream:`). A publish is one `XADD` (a batch, one pipeline of them); the message travels
///   as the entry's fields: `id`, `key` (the [message key](Message::with_key)), one `m:<name>`
///   per metadata entry, and `payload`.
/// - A consumer group is a Redis consumer group, created on first use (`XGROUP CREATE ...
///   MKSTREAM`) at the stream's start ([`StartFrom::Default`] and [`StartFrom::Earliest`]), its
///   end ([`StartFrom::Latest`]) or a time. Each subscription is one consumer of it, named
///   `<name>/<n>` (see [`RedisConsumer`]): stable across restarts, so a restarted process first
///   reads the entries it had read and not settled. A consumer that holds no pending entry and
///   has been idle for [`RedisConfig::forget_consumers_after`] (24 h) is deleted; one that holds
///   entries never is.
/// - A subscription without a group reads with `XREAD` from the stream's end when it subscribes
///   (or the start or a time, as [`SubscribeOptions::start`] says); it acknowledges nothing: a
///   nack or release hands the message out again from memory, a reject drops it.
///
/// # Settling
/// - **ack**: `XACK`.
/// - **nack**: the entry stays pending and is delivered again to the same subscription (`XCLAIM`,
///   which counts a delivery), at once or after the delay; while it waits the backend keeps
///   resetting its idle time, so no one claims it early. If the process dies meanwhile, the entry
///   is read again by the restarted consumer, or claimed by another after
///   [`RedisConfig::claim_idle`].
/// - **reject**: acked and, with [`RedisConfig::dead_letter_suffix`] (default `.dead`), copied in
///   the same script to the stream of the topic `<topic>.dead` with the reason
///   (`millstream.poison.reason`), the topic (`millstream.poison.topic`), the group and the entry
///   id in its metadata ([`Features::dead_letter`] is then true). Without a suffix, dropped.
/// - **release**: as a nack without delay (Redis counts the delivery).
/// - A delivery left unsettled for [`RedisConfig::claim_idle`] (a dead consumer's, a handler too
///   slow) is claimed by a subscription of the group (`XAUTOCLAIM`, every
///   [`RedisConfig::claim_interval`]) and delivered again; entries a trim deleted meanwhile are
///   acked away. A group's subscriptions race for an entry, and one of them wins each claim.
/// - The attempt is the pending entry's delivery count: [`Attempts::Exact`] (Redis counts the
///   deliveries it makes, including entries a subscription had read ahead and not yet handed out
///   when it ended).
///
/// # Order, retention
/// Entries are delivered in stream order to a group with one subscription; with several, each
/// gets its share in order. Redelivered entries come back out of order. Entries stay until
/// trimmed: [`RedisConfig::trim`] trims by length or age, never below the slowest group (see
/// [`Trim`]). Durability is the server's: with `appendonly yes` (and `appendfsync always` for
/// every write) nothing acknowledged is lost across a server restart.
///
/// # Connections
/// Publishing, acknowledging and claiming share one multiplexed connection that reconnects by
/// itself ([`ConnectionManager`]). Each subscription reads on a connection of its own (blocking
/// reads never hold up the shared one) and reconnects with backoff (100 ms doubling up to
/// [`RedisConfig::max_backoff`]); after a reconnection it reads its own pending entries first,
/// in case a reply was lost with the connection. The URL may carry an ACL user and password
/// (`redis://user:password@host:6379/0`); they are never shown ([`Debug`](fmt::Debug) and logs
/// show the URL with the password replaced by `***`). `rediss://` (TLS) needs the `redis-tls`
/// feature; [`with_client`](RedisPubSub::with_client) takes a client with certificates of your own.
///
/// ```no_run
/// # use millstream::pubsub::redis::{RedisConfig, RedisPubSub};
/// # use millstream::{Message, Publisher, Subscriber, SubscribeOptions};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
/// let pubsub = RedisPubSub::connect("redis://127.0.0.1:6379", RedisConfig::default()).await?;
/// let mut orders = pubsub.subscribe("orders.placed", SubscribeOptions::group("billing")).await?;
/// pubsub.publish("orders.placed", Message::new(r#"{"id":1}"#)).await?;
/// let delivery = orders.next().await.expect("open")?;
/// delivery.ack().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisPubSub {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPubSub")
            .field("url", &self.inner.url)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// `url` with the password (of `user:password@`) replaced by `***`.
pub(super) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_owned() };
    let userinfo = &rest[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if userinfo.is_empty() => String::new(),
        None => "***".to_owned(),
    };
    format!("{}{shown}{}", &url[..scheme_end], &rest[at..])
}

impl RedisPubSub {
    /// Connects to the server at `url`: `redis://[user[:password]@]host[:port][/db]`, or
    /// `rediss://` for TLS (feature `redis-tls`; the server's certificate is checked against the
    /// system's roots, see [`with_client`](RedisPubSub::with_client) for a CA of your own). Fails
    /// if the URL is invalid, the server does not answer (after a few attempts with backoff), or
    /// refuses the user or password (a permanent [`ErrorKind::Config`] error).
    pub async fn connect(url: &str, config: RedisConfig) -> Result<Self> {
        let shown = redact(url);
        let client = redis::Client::open(url).map_err(|e| {
            Error::with_source(ErrorKind::Config, e).context(format!("redis: invalid URL {shown}"))
        })?;
        Self::open(client, shown, config).await
    }

    /// Connects with a client built by the `redis` crate, for what a URL cannot say: TLS with a
    /// CA or client certificate of your own (`redis::Client::build_with_tls`, feature
    /// `redis-tls`), a connection set up by hand.
    pub async fn with_client(client: redis::Client, config: RedisConfig) -> Result<Self> {
        let info = client.get_connection_info();
        let scheme = match info.addr {
            redis::ConnectionAddr::TcpTls { .. } => "rediss",
            redis::ConnectionAddr::Unix(_) => "redis+unix",
            _ => "redis",
        };
        let user = match (&info.redis.username, &info.redis.password) {
            (Some(user), Some(_)) => format!("{user}:***@"),
            (Some(user), None) => format!("{user}@"),
            (None, Some(_)) => ":***@".to_owned(),
            (None, None) => String::new(),
        };
        let shown = format!("{scheme}://{user}{}/{}", info.addr, info.redis.db);
        Self::open(client, shown, config).await
    }

    async fn open(client: redis::Client, shown: String, config: RedisConfig) -> Result<Self> {
        // One plain connection first: a wrong password or an unknown user fails here at once
        // (the manager below would retry it with backoff).
        let probe_config = AsyncConnectionConfig::new()
            .set_connection_timeout(config.response_timeout)
            .set_response_timeout(config.response_timeout);
        let mut probe =
            client.get_multiplexed_async_connection_with_config(&probe_config).await.map_err(|e| {
                let kind = match e.kind() {
                    redis::ErrorKind::AuthenticationFailed => ErrorKind::Config,
                    _ => ErrorKind::Backend,
                };
                let error = Error::with_source(kind, e).context(format!("redis: connecting to {shown}"));
                if kind == ErrorKind::Config {
                    error.into_permanent()
                } else {
                    error
                }
            })?;
        // The server's largest argument bounds a payload (an ACL may forbid asking: assume the
        // default, 512 MB).
        let server_max = redis::cmd("CONFIG")
            .arg("GET")
            .arg("proto-max-bulk-len")
            .query_async::<Value>(&mut probe)
            .await
            .ok()
            .and_then(|v| entry::array("CONFIG GET", v).ok())
            .and_then(|items| items.get(1).and_then(|v| entry::int("CONFIG GET", v).ok()))
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(512 * 1024 * 1024);
        drop(probe);
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(config.response_timeout)
            .set_connection_timeout(config.response_timeout)
            .set_number_of_retries(4)
            .set_max_delay(config.max_backoff.as_millis() as u64);
        let manager = ConnectionManager::new_with_config(client.clone(), manager_config)
            .await
            .map_err(|e| redis_error(e, format!("connecting to {shown}")))?;
        let info = client.get_connection_info();
        let server = format!("{}/{}", info.addr, info.redis.db);
        let consumer_base = config.consumer_name.clone().unwrap_or_else(default_consumer_base);
        let max_payload = config.max_payload.min(server_max.saturating_sub(1024));
        let inner = Arc::new(Inner {
            client,
            manager,
            url: shown,
            server,
            consumer_base,
            max_payload,
            cancel: CancellationToken::new(),
            trim_cancel: CancellationToken::new(),
            trimmed: Mutex::new(HashSet::new()),
            publisher_closed: AtomicBool::new(false),
            subscriber_closed: AtomicBool::new(false),
            config,
        });
        if let Some(trim) = inner.config.trim {
            tokio::spawn(trim_task(Arc::downgrade(&inner), trim, inner.trim_cancel.clone()));
        }
        Ok(RedisPubSub { inner })
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The shared connection (publishing, settling), for what this backend does not cover.
    pub fn connection(&self) -> ConnectionManager {
        self.inner.manager.clone()
    }

    /// The key of `topic`'s stream.
    pub fn stream_key(&self, topic: &str) -> String {
        self.inner.stream_key(topic)
    }

    /// Trims `topic`'s stream now with `trim` (never below the slowest group: see [`Trim`]);
    /// returns how many entries were removed. The backend does this by itself every
    /// [`RedisConfig::trim_interval`] when [`RedisConfig::trim`] is set.
    pub async fn trim(&self, topic: &str, trim: Trim) -> Result<u64> {
        self.inner.trim(topic, trim).await
    }

    /// Deletes the streams of `topics` (their entries and groups) for good.
    pub async fn delete_topics(&self, topics: &[String]) -> Result<()> {
        if topics.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = topics.iter().map(|t| self.stream_key(t)).collect();
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<Value>(&mut self.connection())
            .await
            .map_err(|e| redis_error(e, "DEL"))?;
        Ok(())
    }

    async fn publish_all(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        let inner = &self.inner;
        if inner.publisher_closed.load(Ordering::Acquire) {
            return Err(closed_error("Redis publisher is closed"));
        }
        check_topic(topic)?;
        let limit = inner.max_payload;
        for message in &messages {
            check_size("payload", message.payload().len(), limit, "RedisConfig::max_payload")?;
            let size = message.payload().len() + entry::overhead(message);
            check_size(
                "payload and fields",
                size,
                limit + 64 * 1024,
                "RedisConfig::max_payload and 64 KiB of fields",
            )?;
        }
        let key = inner.stream_key(topic);
        let commands = messages.iter().map(|message| {
            let mut command = redis::cmd("XADD");
            command.arg(&key).arg("*");
            entry::encode(&mut command, message);
            command
        });
        let mut manager = inner.manager.clone();
        if messages.len() == 1 {
            let command = commands.into_iter().next().expect("one");
            command.query_async::<Value>(&mut manager).await.map_err(|e| redis_error(e, "XADD"))?;
        } else if !messages.is_empty() {
            let mut pipe = redis::pipe();
            for command in commands {
                pipe.add_command(command).ignore();
            }
            pipe.query_async::<Value>(&mut manager).await.map_err(|e| redis_error(e, "XADD (pipeline)"))?;
        }
        if inner.config.trim.is_some() {
            let mut trimmed = inner.trimmed.lock();
            if !trimmed.contains(topic) {
                trimmed.insert(topic.to_owned());
            }
        }
        Ok(())
    }

    async fn subscribe_to(&self, topic: &str, options: SubscribeOptions) -> Result<Subscription> {
        let inner = &self.inner;
        check_topic(topic)?;
        let key = inner.stream_key(topic);
        let max_in_flight = options.max_in_flight.unwrap_or(inner.config.max_in_flight);
        let Some(group) = options.group else {
            let after = match options.start {
                StartFrom::Earliest => StreamId::ZERO,
                StartFrom::Time(time) => StreamId::before(time),
                _ => inner.last_id(&key).await?,
            };
            let connection = inner.reader_connection().await?;
            return Ok(solo::start_solo(
                inner.clone(),
                topic.to_owned(),
                key,
                after,
                max_in_flight,
                connection,
            ));
        };
        let start = match options.start {
            StartFrom::Latest => "$".to_owned(),
            StartFrom::Time(time) => StreamId::before(time).to_string(),
            _ => "0".to_owned(),
        };
        inner.create_group(&key, &group, &start).await?;
        let base =
            options.extensions.get::<RedisConsumer>().map_or(inner.consumer_base.as_str(), |c| c.0.as_str());
        let slot = Slot::take(format!("{}\n{key}\n{group}\n{base}", inner.server));
        let consumer = format!("{base}/{}", slot.number());
        let connection = inner.reader_connection().await?;
        Ok(group::start_group(
            inner.clone(),
            topic.to_owned(),
            key,
            group,
            consumer,
            slot,
            max_in_flight,
            connection,
        ))
    }
}

fn check_topic(topic: &str) -> Result<()> {
    if topic.is_empty() {
        return Err(Error::new(ErrorKind::Config, "redis: a topic must not be empty"));
    }
    Ok(())
}

/// Trims every stream published to through this pub/sub, every `trim_interval`, until closed.
async fn trim_task(inner: std::sync::Weak<Inner>, trim: Trim, cancel: CancellationToken) {
    loop {
        let interval = match inner.upgrade() {
            Some(inner) => inner.config.trim_interval,
            None => return,
        };
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = cancel.cancelled() => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let topics: Vec<String> = inner.trimmed.lock().iter().cloned().collect();
        for topic in topics {
            match inner.trim(&topic, trim).await {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(topic, removed, "redis: trimmed"),
                Err(error) => tracing::warn!(%error, topic, "redis: trimming failed"),
            }
        }
    }
}

impl Publisher for RedisPubSub {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        OpFuture::boxed(self.publish_all(topic, vec![message]))
    }

    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> OpFuture<'a> {
        OpFuture::boxed(self.publish_all(topic, messages))
    }

    fn close(&self) -> OpFuture<'_> {
        self.inner.publisher_closed.store(true, Ordering::Release);
        self.inner.close_if_done();
        OpFuture::ready(Ok(()))
    }
}

impl Subscriber for RedisPubSub {
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription> {
        if self.inner.subscriber_closed.load(Ordering::Acquire) {
            return OpFuture::ready(Err(closed_error("Redis subscriber is closed")));
        }
        OpFuture::boxed(self.subscribe_to(topic, options))
    }

    fn close(&self) -> OpFuture<'_> {
        self.inner.subscriber_closed.store(true, Ordering::Release);
        self.inner.cancel.cancel();
        self.inner.close_if_done();
        OpFuture::ready(Ok(()))
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> OpFuture<'a> {
        OpFuture::boxed(async move { self.delete_topics(&[topic.to_owned()]).await })
    }

    fn features(&self) -> Features {
        Features {
            backend: "redis",
            consumer_groups: true,
            persistent: true,
            ordered: true,
            history: true,
            redelivery: true,
            ordered_single_subscriber: true,
            strict_order: false,
            exactly_once: true,
            nack_delay: true,
            max_payload: Some(self.inner.max_payload),
            settlement: Settlement::Individual,
            ordered_per_key: false,
            attempts: Attempts::Exact,
            dead_letter: self.inner.config.dead_letter_suffix.is_some(),
            release_uncounted: false,
            refuses_unroutable: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://:s3cret@host:6379/2"), "redis://:***@host:6379/2");
        assert_eq!(redact("rediss://alice:p%40ss@host/0"), "rediss://alice:***@host/0");
        assert_eq!(redact("redis://token@host"), "redis://***@host");
        assert_eq!(redact("redis://host/0?x=a@b"), "redis://host/0?x=a@b");
    }
}
