//! Messages to and from AMQP: the id as `message-id`, the metadata (the key included) as string
//! headers, the publish time as `timestamp`; the attempts a retry queue must not forget in
//! `x-millstream-attempts`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

use crate::error::{Error, ErrorKind, Result};
use crate::message::{Message, MessageId, Metadata};

/// Attempts made before the message went through a retry or dead-letter queue.
pub(crate) const ATTEMPTS_HEADER: &str = "x-millstream-attempts";

/// Headers of the broker (and ours) that are not metadata.
fn is_broker_header(name: &str) -> bool {
    matches!(name, "x-death" | "x-delivery-count")
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
        || name.starts_with("x-millstream-")
}

/// The properties of `message`: persistent (delivery mode 2), its id, its metadata as headers.
/// A metadata key longer than AMQP's 255 bytes is a permanent configuration error.
pub(crate) fn encode(message: &Message) -> Result<BasicProperties> {
    let mut headers = FieldTable::default();
    for (key, value) in message.metadata().iter() {
        let name = ShortString::try_new(key).map_err(|_| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "AMQP: metadata key of {} bytes is over AMQP's header name limit of 255 bytes: {:?}…",
                    key.len(),
                    key.chars().take(32).collect::<String>()
                ),
            )
            .into_permanent()
        })?;
        headers.insert(name, AMQPValue::LongString(value.into()));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(BasicProperties::default()
        .with_message_id(message.id().to_boxed_str().as_ref().into())
        .with_delivery_mode(2)
        .with_timestamp(now)
        .with_headers(headers))
}

fn as_int(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::Timestamp(v) => Some(*v),
        AMQPValue::LongString(v) => std::str::from_utf8(v.as_bytes()).ok()?.parse().ok(),
        AMQPValue::ShortString(v) => v.as_str().parse().ok(),
        _ => None,
    }
}

/// What a delivery says about itself besides the message.
pub(crate) struct Decoded {
    pub(crate) message: Message,
    /// Attempts made before a retry or dead-letter queue (our header).
    pub(crate) prior_attempts: u64,
    /// The broker's count of earlier deliveries from this queue (quorum queues), if given.
    pub(crate) delivery_count: Option<u64>,
    pub(crate) timestamp: Option<SystemTime>,
}

/// Rebuilds a message. One without a (valid) id gets a fresh one: a foreign message's
/// redeliveries then have different ids.
pub(crate) fn decode(properties: &BasicProperties, payload: Bytes) -> Decoded {
    let id = properties
        .message_id()
        .as_ref()
        .and_then(|id| MessageId::parse(id.as_str()).ok())
        .unwrap_or_default();
    let mut metadata = Metadata::new();
    let mut prior_attempts = 0;
    let mut delivery_count = None;
    if let Some(headers) = properties.headers() {
        for (name, value) in headers.inner() {
            let name = name.as_str();
            if name == ATTEMPTS_HEADER {
                prior_attempts = as_int(value).unwrap_or(0);
            } else if name == "x-delivery-count" {
                delivery_count = as_int(value);
            } else if is_broker_header(name) {
                continue;
            } else {
                let text = match value {
                    AMQPValue::LongString(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    AMQPValue::ShortString(v) => v.as_str().to_owned(),
                    AMQPValue::Boolean(v) => v.to_string(),
                    other => match as_int(other) {
                        Some(n) => n.to_string(),
                        None => continue,
                    },
                };
                metadata.insert(name, text);
            }
        }
    }
    let timestamp = properties.timestamp().map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
    Decoded { message: Message::from_parts(id, metadata, payload), prior_attempts, delivery_count, timestamp }
}

/// A copy of a delivery's properties for a retry or dead-letter queue: `attempts` made so far,
/// and `extra` headers (a reason).
pub(crate) fn forward(
    properties: &BasicProperties,
    attempts: u64,
    extra: &[(&str, &str)],
) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = properties.headers() {
        for (name, value) in old.inner() {
            if !is_broker_header(name.as_str()) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    headers
        .insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(i64::try_from(attempts).unwrap_or(i64::MAX)));
    for (name, value) in extra {
        headers.insert((*name).into(), AMQPValue::LongString((*value).into()));
    }
    properties.clone().with_headers(headers)
}
