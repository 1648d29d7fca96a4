//! [`NatsPubSub`]: NATS JetStream (`nats` feature), over async-nats.
//!
//! # Mapping
//! - A topic is a NATS subject (`orders.placed`: dot-separated tokens, no spaces, no wildcards).
//!   Each topic gets its own stream, created on first use: `<prefix><topic, sanitised>_<hash>`,
//!   file storage, limits retention (messages stay until [`NatsConfig::max_age`],
//!   [`NatsConfig::max_bytes`] or [`NatsConfig::max_messages`] deletes them, all unlimited by
//!   default, so groups that arrive late read the history), one subject.
//! - A consumer group is a durable pull consumer on the topic's stream (created on first use,
//!   delivering from the start of the stream); its subscriptions pull from it together and
//!   JetStream spreads the messages among them. A subscription without a group is an ephemeral
//!   pull consumer delivering only new messages; the server deletes it once it has been
//!   unused for [`NatsConfig::inactive_threshold`] after the subscription ended.
//! - The message id travels as `Nats-Msg-Id`, so the stream drops a re-published duplicate within
//!   [`NatsConfig::duplicate_window`] (a publish retried after a timeout is not stored twice). The
//!   metadata travels as one `Millstream-Metadata` header (a JSON array of pairs, ASCII-escaped, so
//!   keys and values may be any text); other headers of foreign messages become metadata too.
//! - Ack is `+ACK`; nack is `-NAK`, with the delay when one is given (`nack_after`); reject is
//!   `+TERM` (never delivered again; JetStream only reports it as an advisory, so the router
//!   publishes a rejected message to its poison topic first); release is a `-NAK` without delay
//!   (JetStream counts it as a delivery). A delivery left unsettled is redelivered after
//!   [`NatsConfig::ack_wait`]. The attempt is JetStream's delivery count.
//! - The client reconnects by itself after the server goes away; subscriptions re-create their
//!   pull stream (and consumer) until the server is back, losing nothing that was stored.
//!
//! # Server version
//! Written for NATS 2.9 (the version tested here, 2.9.10): only JetStream features of 2.9 are used
//! (no multi-subject filters, consumer metadata, compression or subject transforms of 2.10+).
//! The server's `max_payload` (1 MiB by default, headers included) bounds a message:
//! [`Features::max_payload`](super::Features::max_payload) reports what is left for the payload
//! (8 KiB are kept for headers). A publish checks each message against both (the payload against
//! the reported limit, payload and headers against the server's) before sending it, and refuses
//! a larger one with a permanent [`ErrorKind::Config`] error (the server would close the
//! connection on it).
//!
//! # Memory
//! A subscription asks the server for [`NatsConfig::batch`] messages or
//! [`NatsConfig::batch_bytes`] bytes at a time, whichever is reached first (the pull request's
//! `max_bytes`), so what the client buffers stays bounded however large the messages are.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::{
    check_size, closed_error, AckSink, Acker, Attempts, Delivery, Features, OpFuture, Publisher, Settle,
    Settlement, SubscribeOptions, Subscriber, Subscription, Token,
};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Message, MessageId, Metadata};

/// (A `&str` header name never matches the client's standard `Nats-Msg-Id`; the constant does.)
const ID_HEADER: &str = "Nats-Msg-Id";
const METADATA_HEADER: &str = "Millstream-Metadata";
/// Room kept for headers when reporting the largest payload.
const HEADER_ROOM: usize = 8 * 1024;

/// Settings of a [`NatsPubSub`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsConfig {
    /// Prefix of the stream names this backend creates. Default `MS_`.
    pub stream_prefix: String,
    /// How long a delivery may stay unsettled before JetStream redelivers it. Default 30 s.
    pub ack_wait: Duration,
    /// Retention: how old messages may get before the stream deletes them; zero keeps them.
    /// Default zero. The stream's limits apply whether or not a group has read a message: keep
    /// them above the furthest any group may fall behind. An existing stream gets the configured
    /// limits when a topic is first used.
    pub max_age: Duration,
    /// Retention: the most bytes a topic's stream keeps (the oldest messages are deleted to make
    /// room); zero: no limit. Default zero.
    pub max_bytes: u64,
    /// Retention: the most messages a topic's stream keeps (the oldest are deleted); zero: no
    /// limit. Default zero.
    pub max_messages: u64,
    /// The window in which a re-published message id is dropped as a duplicate. Default 2 min.
    pub duplicate_window: Duration,
    /// Messages a subscription asks for at once. Default 100.
    pub batch: usize,
    /// Bytes a subscription asks for at once (the pull request's `max_bytes`; the client asks for
    /// more once half has arrived). Never less than the server's `max_payload` plus room for
    /// headers, since a message larger than a pull's `max_bytes` is never delivered. Default 8 MiB.
    pub batch_bytes: usize,
    /// Deliveries a group may have unsettled at once; 1 gives strict order. Default 1000.
    pub max_ack_pending: i64,
    /// How often a message is delivered at most; -1 for no limit. Default -1.
    pub max_deliver: i64,
    /// How long the server keeps the consumer of a vanished group-less subscription. Default 1 min.
    pub inactive_threshold: Duration,
    /// How long a publish goes on retrying while the server does not answer (a restart, a lost
    /// connection): each try sends the same `Nats-Msg-Id`, so a message the server stored but
    /// could not confirm is not stored twice. Kept below `duplicate_window`. Zero: no retry.
    /// Default 30 s.
    pub publish_retry_for: Duration,
    /// How long a delivery may be kept by heartbeats: while it is unsettled, its subscription
    /// tells the server every third of `ack_wait` that it is still being worked on (`+WPI`), so a
    /// handler slower than `ack_wait` keeps its message; after this, the heartbeats stop and the
    /// server redelivers it after `ack_wait` (a hung handler cannot hold it for ever). Default
    /// 30 min.
    pub max_hold: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            stream_prefix: "MS_".to_owned(),
            ack_wait: Duration::from_secs(30),
            max_age: Duration::ZERO,
            max_bytes: 0,
            max_messages: 0,
            duplicate_window: Duration::from_secs(120),
            batch: 100,
            batch_bytes: 8 * 1024 * 1024,
            max_ack_pending: 1000,
            max_deliver: -1,
            inactive_threshold: Duration::from_secs(60),
            publish_retry_for: Duration::from_secs(30),
            max_hold: Duration::from_secs(30 * 60),
        }
    }
}

impl NatsConfig {
    /// Sets [`NatsConfig::stream_prefix`].
    pub fn stream_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.stream_prefix = prefix.into();
        self
    }

    /// Sets [`NatsConfig::ack_wait`].
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// Sets [`NatsConfig::max_hold`].
    pub fn max_hold(mut self, hold: Duration) -> Self {
        self.max_hold = hold;
        self
    }

    /// Sets [`NatsConfig::publish_retry_for`].
    pub fn publish_retry_for(mut self, retry_for: Duration) -> Self {
        self.publish_retry_for = retry_for;
        self
    }

    /// Sets [`NatsConfig::max_age`].
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// Sets [`NatsConfig::max_bytes`].
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Sets [`NatsConfig::max_messages`].
    pub fn max_messages(mut self, messages: u64) -> Self {
        self.max_messages = messages;
        self
    }

    /// Sets [`NatsConfig::batch`].
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Sets [`NatsConfig::batch_bytes`].
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// Sets [`NatsConfig::max_ack_pending`] (1: strict order, one message in flight per group).
    pub fn max_ack_pending(mut self, max: i64) -> Self {
        self.max_ack_pending = max;
        self
    }

    /// Sets [`NatsConfig::max_deliver`].
    pub fn max_deliver(mut self, max: i64) -> Self {
        self.max_deliver = max;
        self
    }
}

/// The NATS JetStream pub/sub. Cheap to clone.
///
/// ```no_run
/// # use millstream::pubsub::nats::{NatsPubSub, NatsConfig};
/// # use millstream::{Message, Publisher, Subscriber, SubscribeOptions};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
/// let pubsub = NatsPubSub::connect("nats://127.0.0.1:4222", NatsConfig::default()).await?;
/// let mut orders = pubsub.subscribe("orders.placed", SubscribeOptions::group("billing")).await?;
/// pubsub.publish("orders.placed", Message::new(r#"{"id":1}"#)).await?;
/// let delivery = orders.next().await.expect("open")?;
/// delivery.ack().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsPubSub {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    config: NatsConfig,
    streams: Mutex<HashMap<String, jetstream::stream::Stream>>,
    cancel: CancellationToken,
    publisher_closed: AtomicBool,
    subscriber_closed: AtomicBool,
}

impl fmt::Debug for NatsPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsPubSub").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

fn nats_error(error: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::backend(error)
}

/// FNV-1a: a stable hash (the same in every process and Rust version) for names.
fn fnv(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// A stream or consumer name for `text`: its letters, digits, `-` and `_` (others become `_`),
/// and a hash of the whole, so that distinct texts never share a name.
fn name_for(prefix: &str, text: &str) -> String {
    let clean: String = text
        .chars()
        .take(100)
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    format!("{prefix}{clean}_{:016x}", fnv(text))
}

fn check_subject(topic: &str) -> Result<()> {
    let valid = !topic.is_empty()
        && !topic.chars().any(|c| c.is_whitespace())
        && topic.split('.').all(|token| !token.is_empty() && token != "*" && token != ">");
    if valid {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Config,
            format!("topic {topic:?} is not a NATS subject (dot-separated tokens, no spaces or wildcards)"),
        ))
    }
}

/// JSON with every non-ASCII character escaped (`\uXXXX`): a valid header value for any text.
fn ascii_json(metadata: &Metadata) -> String {
    let pairs: Vec<(&str, &str)> = metadata.iter().collect();
    let json = serde_json::to_string(&pairs).expect("string pairs serialize");
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// The bytes `headers` take on the wire (`NATS/1.0` line, `name: value` lines, blank line), which
/// the server counts against its `max_payload` with the payload.
fn header_len(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values.iter().map(move |value| name.len() + 2 + value.as_str().len() + 2)
        })
        .sum();
    "NATS/1.0\r\n".len() + lines + 2
}

fn encode(message: &Message) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, message.id().to_string());
    if !message.metadata().is_empty() {
        headers.insert(METADATA_HEADER, ascii_json(message.metadata()));
    }
    (headers, message.payload().clone())
}

/// Rebuilds a message. A message without a (valid) id gets one derived from its stream and
/// sequence, so that its redeliveries keep the same id.
fn decode(message: &async_nats::Message, stream: &str, sequence: u64) -> Message {
    let headers = message.headers.as_ref();
    let id = headers
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .and_then(|v| MessageId::parse(v.as_str()).ok())
        .unwrap_or_else(|| {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&fnv(stream).to_be_bytes());
            bytes[8..].copy_from_slice(&sequence.to_be_bytes());
            MessageId::from_uuid(uuid::Builder::from_custom_bytes(bytes).into_uuid())
        });
    let mut metadata = Metadata::new();
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            if name == ID_HEADER || name.starts_with("Nats-") {
                continue;
            }
            let Some(value) = values.first() else { continue };
            if name == METADATA_HEADER {
                match serde_json::from_str::<Vec<(String, String)>>(value.as_str()) {
                    Ok(pairs) => metadata.extend(pairs),
                    Err(_) => {
                        metadata.insert("millstream.raw_metadata", value.as_str());
                    }
                }
            } else {
                metadata.insert(name, value.as_str());
            }
        }
    }
    Message::from_parts(id, metadata, message.payload.clone())
}

impl NatsPubSub {
    /// Connects to the server(s) at `url` (`nats://host:port`, comma-separated for several).
    /// The client reconnects by itself, as long as it takes.
    pub async fn connect(url: &str, config: NatsConfig) -> Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(nats_error)?;
        Ok(Self::with_client(client, config))
    }

    /// Uses an existing client.
    pub fn with_client(client: async_nats::Client, config: NatsConfig) -> Self {
        let js = jetstream::new(client.clone());
        NatsPubSub {
            inner: Arc::new(Inner {
                client,
                js,
                config,
                streams: Mutex::new(HashMap::new()),
                cancel: CancellationToken::new(),
                publisher_closed: AtomicBool::new(false),
                subscriber_closed: AtomicBool::new(false),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// The client, for what this backend does not cover.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The name of `topic`'s stream.
    pub fn stream_name(&self, topic: &str) -> String {
        name_for(&self.inner.config.stream_prefix, topic)
    }

    /// Creates `topic`'s stream unless it exists (publish and subscribe do this on first use).
    pub async fn ensure_stream(&self, topic: &str) -> Result<jetstream::stream::Stream> {
        check_subject(topic)?;
        if let Some(stream) = self.inner.streams.lock().get(topic) {
            return Ok(stream.clone());
        }
        let config = &self.inner.config;
        let limit = |n: u64| if n == 0 { -1 } else { i64::try_from(n).unwrap_or(i64::MAX) };
        // The server refuses a duplicate window longer than the stream's max age.
        let duplicate_window = match config.max_age {
            Duration::ZERO => config.duplicate_window,
            age => config.duplicate_window.min(age),
        };
        let wanted = jetstream::stream::Config {
            name: self.stream_name(topic),
            subjects: vec![topic.to_owned()],
            storage: jetstream::stream::StorageType::File,
            retention: jetstream::stream::RetentionPolicy::Limits,
            max_age: config.max_age,
            max_bytes: limit(config.max_bytes),
            max_messages: limit(config.max_messages),
            duplicate_window,
            ..Default::default()
        };
        let mut stream = self.inner.js.get_or_create_stream(wanted.clone()).await.map_err(nats_error)?;
        // A stream made with other limits (an earlier configuration) gets these.
        let current = &stream.cached_info().config;
        if (current.max_age, current.max_bytes, current.max_messages, current.duplicate_window)
            != (wanted.max_age, wanted.max_bytes, wanted.max_messages, wanted.duplicate_window)
        {
            let updated = jetstream::stream::Config {
                max_age: wanted.max_age,
                max_bytes: wanted.max_bytes,
                max_messages: wanted.max_messages,
                duplicate_window: wanted.duplicate_window,
                ..current.clone()
            };
            self.inner.js.update_stream(updated).await.map_err(nats_error)?;
            stream = self.inner.js.get_stream(wanted.name.clone()).await.map_err(nats_error)?;
        }
        self.inner.streams.lock().insert(topic.to_owned(), stream.clone());
        Ok(stream)
    }

    /// Deletes the streams of `topics` (their messages and consumers) for good.
    pub async fn delete_topics(&self, topics: &[String]) -> Result<()> {
        for topic in topics {
            self.inner.streams.lock().remove(topic);
            match self.inner.js.delete_stream(self.stream_name(topic)).await {
                Ok(_) => {}
                Err(error) if error.to_string().contains("not found") => {}
                Err(error) => return Err(nats_error(error)),
            }
        }
        Ok(())
    }

    async fn publish_all(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.inner.publisher_closed.load(Ordering::Acquire) {
            return Err(closed_error("NATS publisher is closed"));
        }
        self.ensure_stream(topic).await?;
        // Send them all, then wait for the acks: the server stores them in order.
        let limit = self.inner.client.server_info().max_payload;
        let mut encoded: Vec<_> = messages.iter().map(encode).collect();
        if limit > 0 {
            let why = "NATS: the server's max_payload less 8 KiB kept for headers";
            for (headers, payload) in &encoded {
                check_size("payload", payload.len(), limit.saturating_sub(HEADER_ROOM), why)?;
                let size = header_len(headers) + payload.len();
                check_size("payload and headers", size, limit, "NATS: the server's max_payload")?;
            }
        }
        // Retried (the rest of the batch, from the first message not confirmed) while the server
        // does not answer, within `publish_retry_for` and the duplicate window: every try sends the
        // same ids, so what was stored but not confirmed is dropped as a duplicate. The first try
        // sends the encodings checked above; a retry encodes the rest again (the client takes
        // its headers by value: no copy of every message's headers is kept for a retry that
        // rarely comes).
        let config = &self.inner.config;
        let retry_for = config.publish_retry_for.min(config.duplicate_window / 2);
        let started = std::time::Instant::now();
        let mut confirmed = 0;
        let mut tries = 0_u32;
        loop {
            tries += 1;
            let batch = if tries == 1 {
                std::mem::take(&mut encoded)
            } else {
                messages[confirmed..].iter().map(encode).collect()
            };
            let error = match self.send_confirmed(topic, batch).await {
                Ok(()) => return Ok(()),
                Err((done, error)) => {
                    confirmed += done;
                    error
                }
            };
            let waited = started.elapsed();
            if self.inner.publisher_closed.load(Ordering::Acquire) || waited >= retry_for {
                let retried = if tries > 1 {
                    format!(" (tried {tries} times over {waited:.1?})")
                } else {
                    String::new()
                };
                return Err(Error::new(
                    ErrorKind::Backend,
                    format!(
                        "publish to `{topic}` failed{retried}: {error}; {} of {} messages confirmed, the \
                         others may or may not have been stored (publishing them again within the \
                         duplicate window, {:?}, stores each once)",
                        confirmed,
                        messages.len(),
                        config.duplicate_window,
                    ),
                ));
            }
            tracing::debug!(topic, %error, tries, "NATS: publish not confirmed; retrying");
            let pause = Duration::from_millis(50 << tries.min(5)).min(retry_for.saturating_sub(waited));
            tokio::time::sleep(pause).await;
        }
    }

    /// Sends `messages` and waits for the server's confirmations, in order; on failure, how many
    /// were confirmed first, and the error.
    async fn send_confirmed(
        &self,
        topic: &str,
        messages: Vec<(async_nats::HeaderMap, bytes::Bytes)>,
    ) -> std::result::Result<(), (usize, Error)> {
        self.ensure_stream(topic).await.map_err(|error| (0, error))?;
        let mut acks = Vec::with_capacity(messages.len());
        let mut unsent = None;
        for (headers, payload) in messages {
            let sent = self.inner.js.publish_with_headers(topic.to_owned(), headers, payload).await;
            match sent {
                Ok(ack) => acks.push(ack),
                Err(error) => {
                    unsent = Some(nats_error(error));
                    break;
                }
            }
        }
        // Those sent before a failed send still count if they are confirmed.
        let sent = acks.len();
        for (done, ack) in acks.into_iter().enumerate() {
            if let Err(error) = ack.await {
                if matches!(error.kind(), jetstream::context::PublishErrorKind::StreamNotFound) {
                    // Deleted behind our back (or the server is restarting): ensure it again.
                    self.inner.streams.lock().remove(topic);
                }
                return Err((done, nats_error(error)));
            }
        }
        match unsent {
            Some(error) => Err((sent, error)),
            None => Ok(()),
        }
    }

    /// The pull consumer of a subscription: a durable one per group, an ephemeral one without;
    /// `start` is the sequence an ephemeral consumer resumes at (after a reconnection), `from`
    /// where a new consumer starts.
    async fn consumer(
        &self,
        topic: &str,
        group: Option<&str>,
        start: Option<u64>,
        from: &crate::pubsub::StartFrom,
    ) -> Result<pull::Stream> {
        use crate::pubsub::StartFrom;
        use jetstream::consumer::DeliverPolicy;
        let stream = self.ensure_stream(topic).await?;
        let config = &self.inner.config;
        let base = pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver,
            max_ack_pending: config.max_ack_pending,
            filter_subject: topic.to_owned(),
            ..Default::default()
        };
        let consumer = match group {
            Some(group) => {
                let name = name_for("", group);
                // (An existing durable consumer keeps its position.)
                let deliver_policy = match from {
                    StartFrom::Latest => DeliverPolicy::New,
                    StartFrom::Default | StartFrom::Earliest | StartFrom::Time(_) => DeliverPolicy::All,
                };
                let config = pull::Config { durable_name: Some(name.clone()), deliver_policy, ..base };
                stream.get_or_create_consumer(&name, config).await.map_err(nats_error)?
            }
            None => {
                let deliver_policy = match (start, from) {
                    (Some(start_sequence), _) => DeliverPolicy::ByStartSequence { start_sequence },
                    (None, StartFrom::Earliest) => DeliverPolicy::All,
                    (None, _) => DeliverPolicy::New,
                };
                let config =
                    pull::Config { deliver_policy, inactive_threshold: config.inactive_threshold, ..base };
                stream.create_consumer(config).await.map_err(nats_error)?
            }
        };
        // A message larger than a pull's `max_bytes` would never be delivered.
        let max_payload = self.inner.client.server_info().max_payload;
        consumer
            .stream()
            .max_messages_per_batch(config.batch)
            .max_bytes_per_batch(config.batch_bytes.max(max_payload + HEADER_ROOM))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(nats_error)
    }
}

impl Publisher for NatsPubSub {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        OpFuture::boxed(self.publish_all(topic, vec![message]))
    }

    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> OpFuture<'a> {
        OpFuture::boxed(self.publish_all(topic, messages))
    }

    fn close(&self) -> OpFuture<'_> {
        self.inner.publisher_closed.store(true, Ordering::Release);
        OpFuture::boxed(self.inner.close_if_done())
    }
}

impl Inner {
    async fn close_if_done(&self) -> Result<()> {
        if self.publisher_closed.load(Ordering::Acquire) && self.subscriber_closed.load(Ordering::Acquire) {
            // Flush what is buffered; a server that is away must not hold the close up.
            let _ = tokio::time::timeout(Duration::from_secs(5), self.client.flush()).await;
        }
        Ok(())
    }
}

impl Subscriber for NatsPubSub {
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription> {
        if self.inner.subscriber_closed.load(Ordering::Acquire) {
            return OpFuture::ready(Err(closed_error("NATS subscriber is closed")));
        }
        OpFuture::boxed(async move {
            let messages = self.consumer(topic, options.group.as_deref(), None, &options.start).await?;
            let held = Arc::new(Held::default());
            // (With `max_hold` zero there are no heartbeats: nothing is registered per delivery.)
            let heartbeats = !self.inner.config.max_hold.is_zero();
            if heartbeats {
                tokio::spawn(heartbeat(
                    Arc::downgrade(&held),
                    self.inner.client.clone(),
                    self.inner.config.clone(),
                    self.inner.cancel.clone(),
                ));
            }
            let cancel = self.inner.cancel.child_token();
            let state = NatsStream {
                held: heartbeats.then_some(held),
                pubsub: self.clone(),
                topic: topic.to_owned(),
                group: options.group,
                messages: Some(messages),
                cancelled: Box::pin(cancel.clone().cancelled_owned()),
                cancel,
                from: options.start,
                next_start: None,
                failures: 0,
            };
            Ok(Subscription::new(futures_util::stream::unfold(state, |mut state| async move {
                let item = state.next().await?;
                Some((item, state))
            })))
        })
    }

    fn close(&self) -> OpFuture<'_> {
        self.inner.subscriber_closed.store(true, Ordering::Release);
        self.inner.cancel.cancel();
        OpFuture::boxed(self.inner.close_if_done())
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> OpFuture<'a> {
        OpFuture::boxed(async move { self.delete_topics(&[topic.to_owned()]).await })
    }

    fn features(&self) -> Features {
        let strict = self.inner.config.max_ack_pending == 1;
        let max_payload = self.inner.client.server_info().max_payload;
        Features {
            backend: "nats",
            consumer_groups: true,
            persistent: true,
            ordered: true,
            history: true,
            redelivery: true,
            ordered_single_subscriber: !strict,
            strict_order: strict,
            exactly_once: false,
            nack_delay: true,
            max_payload: (max_payload > 0).then(|| max_payload.saturating_sub(HEADER_ROOM)),
            settlement: Settlement::Individual,
            ordered_per_key: strict,
            attempts: Attempts::Exact,
            dead_letter: false,
            release_uncounted: false,
            refuses_unroutable: false,
        }
    }
}

struct NatsStream {
    /// The deliveries handed out, for the heartbeat (none without heartbeats).
    held: Option<Arc<Held>>,
    pubsub: NatsPubSub,
    topic: String,
    group: Option<String>,
    messages: Option<pull::Stream>,
    cancel: CancellationToken,
    /// `cancel`'s wait, made once: a new one per message would register with the token (a lock)
    /// each time.
    cancelled: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    /// Where the subscription started (for a consumer re-created before any delivery).
    from: crate::pubsub::StartFrom,
    /// For a group-less subscription whose consumer must be re-created: where to start again.
    next_start: Option<u64>,
    failures: u32,
}

impl NatsStream {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if self.cancel.is_cancelled() {
                return None;
            }
            let Some(messages) = self.messages.as_mut() else {
                // (Re)create the pull stream, backing off while the server is away.
                let backoff = Duration::from_millis(100 * u64::from(self.failures.min(20)));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut self.cancelled => return None,
                }
                match self
                    .pubsub
                    .consumer(&self.topic, self.group.as_deref(), self.next_start, &self.from)
                    .await
                {
                    Ok(messages) => self.messages = Some(messages),
                    Err(error) => {
                        self.failures += 1;
                        tracing::debug!(%error, topic = self.topic, "NATS: re-creating the pull stream failed");
                    }
                }
                continue;
            };
            let item = tokio::select! {
                biased;
                item = messages.next() => item,
                () = &mut self.cancelled => return None,
            };
            match item {
                Some(Ok(message)) => {
                    self.failures = 0;
                    let (sequence, attempt, decoded) = match message.info() {
                        Ok(info) => (
                            info.stream_sequence,
                            info.delivered,
                            decode(&message.message, info.stream, info.stream_sequence),
                        ),
                        Err(_) => (0, 1, decode(&message.message, "", 0)),
                    };
                    if self.group.is_none() {
                        self.next_start = Some(sequence + 1);
                    }
                    let reply = self.held.as_ref().and(message.message.reply.clone());
                    let ack = Arc::new(NatsAck(Mutex::new(Some(message))));
                    if let (Some(held), Some(reply)) = (&self.held, reply) {
                        held.add(&ack, reply);
                    }
                    let acker = Acker::new(ack, Token::new(sequence), None);
                    let attempt = u32::try_from(attempt.max(1)).unwrap_or(u32::MAX);
                    return Some(Ok(Delivery::new(decoded, attempt, acker)));
                }
                Some(Err(error)) => {
                    // Heartbeats missed, a pull refused, the consumer gone (server restart): start
                    // a new pull stream; JetStream redelivers whatever was not acked.
                    tracing::warn!(%error, topic = self.topic, "NATS: pull stream failed; re-creating it");
                    self.failures += 1;
                    self.messages = None;
                }
                None => {
                    self.failures += 1;
                    self.messages = None;
                }
            }
        }
    }
}

/// The unsettled deliveries of one subscription: each one's acker (weakly: a settled or dropped
/// one is forgotten), its reply subject, and since when it is held.
#[derive(Default)]
struct Held(Mutex<HeldList>);

#[derive(Default)]
struct HeldList {
    entries: Vec<(std::sync::Weak<NatsAck>, async_nats::Subject, std::time::Instant)>,
    /// The length at which settled entries are swept out on the next `add` (twice what was left
    /// last time, at least 256), so the list stays about as long as what is really held.
    sweep_at: usize,
}

impl HeldList {
    fn sweep(&mut self) {
        self.entries.retain(|(ack, ..)| ack.upgrade().is_some_and(|ack| ack.0.lock().is_some()));
        self.sweep_at = (self.entries.len() * 2).max(256);
    }
}

impl Held {
    fn add(&self, ack: &Arc<NatsAck>, reply: async_nats::Subject) {
        let mut held = self.0.lock();
        if held.entries.len() >= held.sweep_at {
            held.sweep();
        }
        held.entries.push((Arc::downgrade(ack), reply, std::time::Instant::now()));
    }

    /// The reply subjects of the deliveries still unsettled and held less than `max_hold`;
    /// forgets the others.
    fn due(&self, max_hold: Duration) -> Vec<async_nats::Subject> {
        let mut held = self.0.lock();
        held.sweep();
        held.entries
            .iter()
            .filter(|(.., since)| since.elapsed() < max_hold)
            .map(|(_, reply, _)| reply.clone())
            .collect()
    }
}

/// Tells the server, every third of `ack_wait`, that the subscription's unsettled deliveries are
/// still being worked on (`+WPI`, which restarts their ack wait), up to `max_hold`; ends with the
/// subscription or when the subscriber closes.
async fn heartbeat(
    held: std::sync::Weak<Held>,
    client: async_nats::Client,
    config: NatsConfig,
    closed: CancellationToken,
) {
    let every = (config.ack_wait / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = closed.cancelled() => return,
        }
        let Some(held) = held.upgrade() else { return };
        for reply in held.due(config.max_hold) {
            if let Err(error) = client.publish(reply, bytes::Bytes::from_static(b"+WPI")).await {
                tracing::debug!(%error, "NATS: a delivery's heartbeat was not sent");
            }
        }
    }
}

/// Settles one JetStream delivery.
struct NatsAck(Mutex<Option<jetstream::Message>>);

impl NatsAck {
    fn settle(&self, kind: AckKind) -> OpFuture<'static> {
        let Some(message) = self.0.lock().take() else {
            return OpFuture::ready(Err(Error::new(ErrorKind::Backend, "delivery already settled")));
        };
        OpFuture::boxed(async move {
            message.ack_with(kind).await.map_err(|e| Error::new(ErrorKind::Backend, e.to_string()))
        })
    }
}

impl AckSink for NatsAck {
    fn settle(&self, _token: Token, _message: Option<Message>, how: Settle) -> OpFuture<'static> {
        let kind = match how {
            Settle::Nack(Some(delay)) if !delay.is_zero() => AckKind::Nak(Some(delay)),
            Settle::Nack(_) | Settle::Release => AckKind::Nak(None),
            Settle::Reject(_) => AckKind::Term,
            Settle::Ack => AckKind::Ack,
        };
        NatsAck::settle(self, kind)
    }
}
