//! A [`Message`] as a Kafka record (key, headers, value) and back.
//!
//! - The [key](crate::Message::with_key) is the record's key (not a header), so Kafka's
//!   partitioner keeps a key on one partition.
//! - The id travels in the header `millstream-id`; each metadata entry is a header of its own.
//! - A [`Redelivery::Republish`](super::Redelivery::Republish) copy counts its attempts in the
//!   header `millstream-attempt`.
//! - A record from a foreign producer keeps its headers as metadata (values that are not UTF-8
//!   are read lossily) and gets an id made from its topic, partition and offset, so that its
//!   redeliveries keep it.
//! - A header whose name is not UTF-8 (rdkafka would panic reading it) is skipped, with a warning.

use bytes::Bytes;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::Message as _;

use crate::keys;
use crate::message::{Message, MessageId, Metadata};

pub(super) const ID_HEADER: &str = "millstream-id";
pub(super) const ATTEMPT_HEADER: &str = "millstream-attempt";

/// A message ready to send.
pub(super) struct Record {
    pub(super) key: Option<Box<str>>,
    pub(super) headers: OwnedHeaders,
    pub(super) payload: Bytes,
    /// Payload, key and headers, in bytes: what the broker's message size limit counts.
    pub(super) size: usize,
}

/// The record of `message`; `attempt`, when given, is written as [`ATTEMPT_HEADER`].
pub(super) fn encode(message: Message, attempt: Option<u32>) -> Record {
    let (id, metadata, payload) = message.into_parts();
    let mut headers = OwnedHeaders::new_with_capacity(metadata.len() + 1);
    let mut id_text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id_text = id.as_uuid().hyphenated().encode_lower(&mut id_text);
    let mut size = payload.len() + ID_HEADER.len() + id_text.len();
    headers = headers.insert(Header { key: ID_HEADER, value: Some(id_text.as_bytes()) });
    let mut key = None;
    for (name, value) in metadata.iter() {
        match name {
            keys::KEY if key.is_none() => {
                size += value.len();
                key = Some(Box::from(value));
            }
            ID_HEADER | ATTEMPT_HEADER => {}
            _ => {
                size += name.len() + value.len();
                headers = headers.insert(Header { key: name, value: Some(value.as_bytes()) });
            }
        }
    }
    if let Some(attempt) = attempt {
        let text = attempt.to_string();
        size += ATTEMPT_HEADER.len() + text.len();
        headers = headers.insert(Header { key: ATTEMPT_HEADER, value: Some(text.as_bytes()) });
    }
    Record { key, headers, payload, size }
}

/// A received record's id as the poller reads it: the subscription's task parses the text (the
/// poller, which reads every record, is the busier of the two; see `consume::accept`).
pub(super) enum Id {
    /// The hyphenated text of [`ID_HEADER`], the form [`encode`] writes; not parsed yet.
    Text([u8; uuid::fmt::Hyphenated::LENGTH]),
    /// Parsed already (another form of UUID), or made from the record's place in the log (no id
    /// header).
    Parsed(MessageId),
}

impl Id {
    /// The message id: the text parsed, or, where it is not a UUID, one made from the record's
    /// place in the log.
    pub(super) fn resolve(self, topic: &str, partition: i32, offset: i64) -> MessageId {
        match self {
            Id::Text(text) => {
                MessageId::parse_ascii(&text).unwrap_or_else(|_| foreign_id(topic, partition, offset))
            }
            Id::Parsed(id) => id,
        }
    }
}

/// What a received record carries besides its payload: its id, its metadata (key and headers),
/// and the attempts its [`ATTEMPT_HEADER`] counts (0 without one).
pub(super) struct Decoded {
    pub(super) id: Id,
    pub(super) metadata: Metadata,
    pub(super) attempts: u32,
}

/// Reads a received record's key and headers (see [`Decoded`]).
pub(super) fn decode(record: &BorrowedMessage<'_>) -> Decoded {
    let mut id = None;
    let mut attempts = 0;
    let mut metadata = Metadata::new();
    if let Some(key) = record.key() {
        metadata.insert_static(keys::KEY, String::from_utf8_lossy(key));
    }
    if let Some(headers) = record.headers() {
        // Counted once (`Headers::iter` asks librdkafka for the count again at every step).
        for header in (0..headers.count()).filter_map(|index| header_at(record, headers, index)) {
            let value = header.value.unwrap_or_default();
            match header.key {
                ID_HEADER if id.is_none() => {
                    id = match <[u8; uuid::fmt::Hyphenated::LENGTH]>::try_from(value) {
                        Ok(text) => Some(Id::Text(text)),
                        Err(_) => MessageId::parse_ascii(value).ok().map(Id::Parsed),
                    };
                }
                ATTEMPT_HEADER => {
                    attempts = std::str::from_utf8(value).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
                }
                name => {
                    metadata.insert(name, String::from_utf8_lossy(value));
                }
            }
        }
    }
    let id =
        id.unwrap_or_else(|| Id::Parsed(foreign_id(record.topic(), record.partition(), record.offset())));
    Decoded { id, metadata, attempts }
}

/// Header `index` of `record`, or `None`; one whose name is not UTF-8 is skipped with a warning.
/// rdkafka 0.39 reads a header's name with `CStr::to_str().unwrap()`, which panics on such a name
/// (a foreign producer's): unguarded, that panic would end the poller and the subscription.
fn header_at<'a>(
    record: &BorrowedMessage<'_>,
    headers: &'a rdkafka::message::BorrowedHeaders,
    index: usize,
) -> Option<Header<'a, &'a [u8]>> {
    guarded(|| headers.try_get(index)).unwrap_or_else(|| {
        tracing::warn!(
            topic = record.topic(),
            partition = record.partition(),
            offset = record.offset(),
            index,
            "kafka: a header whose name is not UTF-8 was skipped"
        );
        None
    })
}

/// `read()`, or `None` if it panicked.
fn guarded<T>(read: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).ok()
}

/// A stable id for a record that came without one: its place in the log.
fn foreign_id(topic: &str, partition: i32, offset: i64) -> MessageId {
    let hash = topic
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&(hash as u32).to_be_bytes());
    bytes[4..8].copy_from_slice(&partition.to_be_bytes());
    bytes[8..].copy_from_slice(&offset.to_be_bytes());
    MessageId::from_uuid(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_record_key_not_a_header() {
        let record = encode(Message::new("x").with_key("order-7").with_header("a", "1"), Some(3));
        assert_eq!(record.key.as_deref(), Some("order-7"));
        let names: Vec<&str> = record.headers.iter().map(|h| h.key).collect();
        assert_eq!(names, [ID_HEADER, "a", ATTEMPT_HEADER]);
        assert_eq!(record.payload, "x");
        assert!(record.size >= 1 + 7 + 36, "{}", record.size);
    }

    #[test]
    fn foreign_ids_are_stable_and_distinct() {
        assert_eq!(foreign_id("t", 0, 5), foreign_id("t", 0, 5));
        assert_ne!(foreign_id("t", 0, 5), foreign_id("t", 1, 5));
        assert_ne!(foreign_id("t", 0, 5), foreign_id("u", 0, 5));
    }

    #[test]
    fn a_panicking_header_read_is_caught() {
        assert_eq!(guarded(|| 7), Some(7));
        let caught: Option<u8> = guarded(|| panic!("a header name that is not UTF-8"));
        assert_eq!(caught, None);
    }
}
