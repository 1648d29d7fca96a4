//! A message as a row of the `messages` table: [`StoredMessage`] as written, [`Row`] as read back
//! (its id and metadata by [`decode_head`], its payload taken out of the database's row by
//! [`IntoPayload`]).

use bytes::Bytes;

use crate::message::{Message, MessageId, Metadata};

/// One claimed message: its sequence number and the message.
pub(super) type Row = (i64, Message);

/// The columns of a claimed row, as the read statement selects them.
pub(super) const SEQ: usize = 0;
pub(super) const ID: usize = 1;
pub(super) const METADATA: usize = 2;
pub(super) const PAYLOAD: usize = 3;

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

    /// The bytes of the row's id, metadata and payload.
    pub(super) fn stored_len(&self) -> usize {
        self.id.len() + self.metadata.len() + self.payload.len()
    }
}

/// Rebuilds a message's id and metadata from its row. Nothing is dropped: an id or metadata that
/// does not parse (a row written by something else) still delivers the message, with a fresh id
/// or with the raw metadata under `millstream.raw_metadata`.
pub(super) fn decode_head(id: &str, metadata: &str) -> (MessageId, Metadata) {
    let id = MessageId::parse(id).unwrap_or_else(|_| {
        tracing::warn!(id, "SQL backend: a stored message id is not a UUID; delivering with a new id");
        MessageId::new()
    });
    let metadata = match serde_json::from_str::<Vec<(String, String)>>(metadata) {
        Ok(pairs) => pairs.into_iter().collect(),
        Err(_) => Metadata::builder().with("millstream.raw_metadata", metadata).build(),
    };
    (id, metadata)
}

/// A database row whose [`PAYLOAD`] column becomes a message's payload.
pub(super) trait IntoPayload: Sized {
    /// The payload, without the rest of the row.
    fn into_payload(self) -> Result<Bytes, sqlx::Error>;
}

/// SQLite: sqlx copies each value out of SQLite into the row, so the payload is left where it is
/// and the row becomes its owner (a row holds only its own values): no second copy of the payload.
#[cfg(feature = "sqlite")]
impl IntoPayload for sqlx::sqlite::SqliteRow {
    fn into_payload(self) -> Result<Bytes, sqlx::Error> {
        use sqlx::Row as _;

        struct Owner(sqlx::sqlite::SqliteRow);

        impl AsRef<[u8]> for Owner {
            fn as_ref(&self) -> &[u8] {
                // Decoded (and checked) once before; `Bytes` calls this once, when it is built.
                self.0.try_get::<&[u8], _>(PAYLOAD).unwrap_or_default()
            }
        }

        self.try_get::<&[u8], _>(PAYLOAD)?;
        Ok(Bytes::from_owner(Owner(self)))
    }
}

/// PostgreSQL: the row is a slice of the connection's read buffer, which a payload kept by the
/// application must not hold on to: the payload is copied out.
#[cfg(feature = "postgres")]
impl IntoPayload for sqlx::postgres::PgRow {
    fn into_payload(self) -> Result<Bytes, sqlx::Error> {
        sqlx::Row::try_get::<Vec<u8>, _>(&self, PAYLOAD).map(Bytes::from)
    }
}

/// MySQL: as PostgreSQL, the payload is copied out of the connection's read buffer.
#[cfg(feature = "mysql")]
impl IntoPayload for sqlx::mysql::MySqlRow {
    fn into_payload(self) -> Result<Bytes, sqlx::Error> {
        sqlx::Row::try_get::<Vec<u8>, _>(&self, PAYLOAD).map(Bytes::from)
    }
}
