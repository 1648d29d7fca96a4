//! A message as a row of the `messages` table: [`StoredMessage`] as written, [`Row`] as read back
//! and turned into a [`Message`] again by [`decode_row`].

use bytes::Bytes;

use crate::message::{Message, MessageId, Metadata};

/// One claimed message row: (seq, id, metadata JSON, payload).
pub(super) type Row = (i64, String, String, Vec<u8>);

/// A message as stored: id and metadata as text, the payload as is.
pub(super) struct StoredMessage {
    pub(super) id: String,
    pub(super) metadata: String,
    pub(super) payload: Bytes,
}

impl StoredMessage {
    pub(super) fn new(message: Message) -> Self {
        let (id, metadata, payload) = message.into_parts();
        let pairs: Vec<(&str, &str)> = metadata.iter().collect();
        let metadata = serde_json::to_string(&pairs).expect("string pairs serialize");
        StoredMessage { id: id.to_string(), metadata, payload }
    }
}

/// Rebuilds a message from its row. Nothing is dropped: an id or metadata that does not parse (a
/// row written by something else) still delivers the message, with a fresh id or with the raw
/// metadata under `millstream.raw_metadata`.
pub(super) fn decode_row(id: &str, metadata: &str, payload: Vec<u8>) -> Message {
    let id = MessageId::parse(id).unwrap_or_else(|_| {
        tracing::warn!(id, "SQL backend: a stored message id is not a UUID; delivering with a new id");
        MessageId::new()
    });
    let metadata = match serde_json::from_str::<Vec<(String, String)>>(metadata) {
        Ok(pairs) => pairs.into_iter().collect(),
        Err(_) => Metadata::builder().with("millstream.raw_metadata", metadata).build(),
    };
    Message::from_parts(id, metadata, Bytes::from(payload))
}
