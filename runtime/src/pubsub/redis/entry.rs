//! Stream entries: [`StreamId`]s, how a [`Message`] becomes the fields of an entry and back, and
//! reading the replies of the stream commands.
//!
//! An entry's fields are `id` (the message id), `key` (the message's key, when it has one), one
//! `m:<name>` field per metadata entry and `payload` (the bytes as they are). An entry written by
//! another program keeps its other fields as metadata (under their own names); without an `id`
//! it gets one derived from the stream and the entry id, the same on every delivery.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::keys;
use crate::message::{DeliveryInfo, Message, MessageId, Metadata};
use crate::pubsub::Token;

pub(super) const ID_FIELD: &str = "id";
pub(super) const KEY_FIELD: &str = "key";
pub(super) const PAYLOAD_FIELD: &str = "payload";
pub(super) const META_PREFIX: &str = "m:";

/// A stream entry id: milliseconds and a sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct StreamId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

impl StreamId {
    pub(crate) const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// Parses `ms-seq` (or `ms`, sequence 0).
    pub(crate) fn parse(text: &[u8]) -> Option<StreamId> {
        let text = std::str::from_utf8(text).ok()?;
        let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
        Some(StreamId { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }

    pub(crate) fn token(self) -> Token {
        Token::pair(self.ms, self.seq)
    }

    pub(crate) fn from_token(token: Token) -> StreamId {
        let (ms, seq) = token.pair_parts();
        StreamId { ms, seq }
    }

    /// The id just before the first entry stored at `time` (an `XREAD` start position).
    pub(crate) fn before(time: SystemTime) -> StreamId {
        let ms = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        match ms {
            0 => StreamId::ZERO,
            ms => StreamId { ms: ms - 1, seq: u64::MAX },
        }
    }

    /// When the entry was added (its milliseconds).
    pub(crate) fn time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.ms)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The `XADD` arguments after the stream key and `*`.
pub(super) fn encode(command: &mut redis::Cmd, message: &Message) {
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    command.arg(ID_FIELD).arg(&*message.id().as_uuid().hyphenated().encode_lower(&mut id));
    let mut name = String::new();
    for (key, value) in message.metadata().iter() {
        if key == keys::KEY {
            command.arg(KEY_FIELD).arg(value);
        } else {
            name.clear();
            name.push_str(META_PREFIX);
            name.push_str(key);
            command.arg(name.as_str()).arg(value);
        }
    }
    command.arg(PAYLOAD_FIELD).arg(&message.payload()[..]);
}

/// The bytes `message` takes in its entry, less the payload (field names and values).
pub(super) fn overhead(message: &Message) -> usize {
    let metadata: usize = message.metadata().iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    ID_FIELD.len() + 36 + PAYLOAD_FIELD.len() + metadata
}

/// One entry as read: its id and its fields (`None`: the entry was deleted, by a trim or XDEL).
pub(crate) struct Entry {
    pub(crate) id: StreamId,
    pub(crate) fields: Option<Vec<Value>>,
}

fn text(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

pub(super) fn unexpected(what: &str, value: &Value) -> Error {
    let mut shown = format!("{value:?}");
    shown.truncate(200);
    Error::new(ErrorKind::Backend, format!("redis: unexpected reply to {what}: {shown}"))
}

/// The items of an array reply (`Nil` is empty).
pub(super) fn array(what: &str, value: Value) -> Result<Vec<Value>> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        Value::Map(pairs) => Ok(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        other => Err(unexpected(what, &other)),
    }
}

/// An integer reply.
pub(super) fn int(what: &str, value: &Value) -> Result<i64> {
    match value {
        Value::Int(n) => Ok(*n),
        other => text(other)
            .and_then(|t| std::str::from_utf8(t).ok()?.parse().ok())
            .ok_or_else(|| unexpected(what, other)),
    }
}

/// A stream id reply.
pub(super) fn stream_id(what: &str, value: &Value) -> Result<StreamId> {
    text(value).and_then(StreamId::parse).ok_or_else(|| unexpected(what, value))
}

/// The entries of an `XRANGE`-shaped reply: `[[id, [field, value, ...] | nil], ...]`.
pub(super) fn entries(what: &str, value: Value) -> Result<Vec<Entry>> {
    array(what, value)?
        .into_iter()
        .map(|entry| {
            let mut parts = array(what, entry)?.into_iter();
            let id = parts.next().ok_or_else(|| unexpected(what, &Value::Nil))?;
            let id = stream_id(what, &id)?;
            let fields = match parts.next() {
                None | Some(Value::Nil) | Some(Value::Boolean(false)) => None,
                Some(fields) => Some(array(what, fields)?),
            };
            Ok(Entry { id, fields })
        })
        .collect()
}

/// The entries of an `XREAD`/`XREADGROUP` reply for one stream (`nil` when the block timed out).
pub(super) fn read_reply(what: &str, value: Value) -> Result<Vec<Entry>> {
    let mut items = array(what, value)?.into_iter();
    // RESP2: [[key, entries]]; RESP3: a map {key: entries}, flattened by `array`.
    match items.next() {
        None => Ok(Vec::new()),
        Some(Value::Array(pair)) => {
            let mut pair = pair.into_iter();
            let _key = pair.next();
            entries(what, pair.next().unwrap_or(Value::Nil))
        }
        Some(_key) => entries(what, items.next().unwrap_or(Value::Nil)),
    }
}

/// FNV-1a: a stable hash for derived ids.
fn fnv(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// Rebuilds the message of an entry of `stream`.
pub(super) fn decode(stream: &str, id: StreamId, fields: Vec<Value>) -> Message {
    let mut message_id = None;
    let mut metadata = Metadata::new();
    let mut payload = Bytes::new();
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let Some(name) = text(&name).map(String::from_utf8_lossy) else { continue };
        let value = match value {
            Value::BulkString(bytes) => bytes,
            other => match text(&other) {
                Some(bytes) => bytes.to_vec(),
                None => continue,
            },
        };
        match &*name {
            PAYLOAD_FIELD => payload = Bytes::from(value),
            ID_FIELD => {
                message_id = MessageId::parse_ascii(&value).ok();
            }
            KEY_FIELD => {
                metadata.insert_static(keys::KEY, String::from_utf8_lossy(&value));
            }
            other => {
                let key = other.strip_prefix(META_PREFIX).unwrap_or(other);
                metadata.insert(key, String::from_utf8_lossy(&value));
            }
        }
    }
    let message_id = message_id.unwrap_or_else(|| {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&fnv(stream.as_bytes()).to_be_bytes());
        bytes[8..].copy_from_slice(&(id.ms ^ id.seq.rotate_left(48)).to_be_bytes());
        MessageId::from_uuid(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    });
    let mut message = Message::from_parts(message_id, metadata, payload);
    message.set_delivery_info(DeliveryInfo::new().timestamp(id.time()));
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn stream_ids_parse_print_and_round_trip_through_tokens() {
        let id = StreamId::parse(b"1700000000123-7").unwrap();
        assert_eq!(id, StreamId { ms: 1_700_000_000_123, seq: 7 });
        assert_eq!(id.to_string(), "1700000000123-7");
        assert_eq!(StreamId::from_token(id.token()), id);
        assert_eq!(StreamId::parse(b"5"), Some(StreamId { ms: 5, seq: 0 }));
        assert_eq!(StreamId::parse(b"x-1"), None);
        assert!(StreamId::parse(b"2-0") > StreamId::parse(b"1-99"));
        let time = UNIX_EPOCH + Duration::from_millis(10);
        assert_eq!(StreamId::before(time).to_string(), format!("9-{}", u64::MAX));
    }

    #[test]
    fn messages_round_trip_through_fields() {
        let message = Message::new("body").with_key("k1").with_header("a", "1").with_header("ключ", "");
        let mut command = redis::cmd("XADD");
        encode(&mut command, &message);
        let args: Vec<Value> = command
            .args_iter()
            .skip(1)
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => Value::BulkString(bytes.to_vec()),
                redis::Arg::Cursor => Value::Nil,
            })
            .collect();
        let back = decode("s", StreamId { ms: 1, seq: 0 }, args);
        assert_eq!(back.id(), message.id());
        assert_eq!(back.payload(), message.payload());
        assert_eq!(back.key(), Some("k1"));
        assert_eq!(back.metadata().get("a"), Some("1"));
        assert_eq!(back.metadata().get("ключ"), Some(""));
        assert_eq!(back.metadata().len(), 3);
    }

    #[test]
    fn foreign_entries_get_a_stable_id_and_their_fields_as_metadata() {
        let fields = || vec![bulk("temperature"), bulk("21.5")];
        let a = decode("s", StreamId { ms: 9, seq: 1 }, fields());
        let b = decode("s", StreamId { ms: 9, seq: 1 }, fields());
        let c = decode("s", StreamId { ms: 9, seq: 2 }, fields());
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_eq!(a.metadata().get("temperature"), Some("21.5"));
        assert!(a.payload().is_empty());
    }

    #[test]
    fn read_replies_in_both_protocols() {
        let entry = Value::Array(vec![bulk("1-1"), Value::Array(vec![bulk("payload"), bulk("x")])]);
        let deleted = Value::Array(vec![bulk("1-2"), Value::Nil]);
        let resp2 =
            Value::Array(vec![Value::Array(vec![bulk("k"), Value::Array(vec![entry.clone(), deleted])])]);
        let got = read_reply("XREAD", resp2).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got[0].fields.is_some() && got[1].fields.is_none());
        let resp3 = Value::Map(vec![(bulk("k"), Value::Array(vec![entry]))]);
        assert_eq!(read_reply("XREAD", resp3).unwrap().len(), 1);
        assert!(read_reply("XREAD", Value::Nil).unwrap().is_empty());
    }
}
