//! Payload encoding: the [`Codec`] trait and the default [`JsonCodec`].
//!
//! A handler decodes its payload with its codec (JSON unless configured otherwise) and encodes the
//! values it publishes with the same codec. Decoding failures become permanent
//! [`ErrorKind::Decode`](crate::ErrorKind) errors carrying the decoder's message.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorKind};

#[cfg(feature = "protobuf")]
mod protobuf;
#[cfg(feature = "protobuf")]
pub use self::protobuf::{Proto, ProtobufCodec};

/// Turns values into payload bytes and back.
///
/// Implement it to add a format; the type is chosen per handler, so the hot path is statically
/// dispatched. [`DynEncoder`] is its object-safe encoding half, used where the value type is only
/// known at the call site (for example [`Ctx::publish`](crate::Ctx::publish)).
pub trait Codec: Send + Sync + 'static {
    /// The MIME type of the encoding, e.g. `application/json`.
    fn content_type(&self) -> &'static str;

    /// Encodes a value.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, Error>;

    /// Decodes a value; a failure must be an [`ErrorKind::Decode`] error (see [`Error::decode`]).
    fn decode<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, Error>;
}

/// JSON through `serde_json`: the default codec.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    #[inline]
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, Error> {
        let mut buf = Vec::with_capacity(64);
        serde_json::to_writer(&mut buf, value).map_err(|e| Error::with_source(ErrorKind::Encode, e))?;
        Ok(crate::message::payload_from_vec(buf))
    }

    #[inline]
    fn decode<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(payload).map_err(Error::decode)
    }
}

/// A payload type that names its codec: a `#[millstream::handler]` (or command, event or saga
/// handler) taking it as its payload decodes, and encodes what it publishes, with that codec
/// unless its `codec` key names another. Any other payload type means JSON.
/// [`Proto<T>`](Proto) (`protobuf` feature) names [`ProtobufCodec`].
///
/// ```
/// use millstream::codec::{JsonCodec, NamedCodec};
///
/// #[derive(serde::Deserialize)]
/// struct Reading { celsius: f32 }
///
/// // (Any codec: here JSON, named explicitly.)
/// impl NamedCodec for Reading {
///     type Codec = JsonCodec;
/// }
/// ```
pub trait NamedCodec {
    /// The codec.
    type Codec: Codec + Clone + Default;
}

/// The object-safe encoding half of a [`Codec`]; every codec implements it.
pub trait DynEncoder: Send + Sync + 'static {
    /// Encodes a type-erased value.
    fn encode_dyn(&self, value: &dyn erased_serde::Serialize) -> Result<Bytes, Error>;

    /// The MIME type of the encoding.
    fn content_type_dyn(&self) -> &'static str;
}

impl<C: Codec> DynEncoder for C {
    fn encode_dyn(&self, value: &dyn erased_serde::Serialize) -> Result<Bytes, Error> {
        self.encode(value)
    }

    fn content_type_dyn(&self) -> &'static str {
        self.content_type()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Order {
        id: u64,
        sku: String,
    }

    #[test]
    fn json_round_trip_and_dyn_encoding_agree() {
        let order = Order { id: 7, sku: "abc".into() };
        let bytes = JsonCodec.encode(&order).unwrap();
        assert_eq!(&bytes[..], br#"{"id":7,"sku":"abc"}"#);
        let dyn_bytes = (&JsonCodec as &dyn DynEncoder).encode_dyn(&order).unwrap();
        assert_eq!(bytes, dyn_bytes);
        assert_eq!(JsonCodec.decode::<Order>(&bytes).unwrap(), order);
    }

    #[test]
    fn decode_failure_is_permanent_and_explains() {
        let err = JsonCodec.decode::<Order>(br#"{"id":"x"}"#).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(err.is_permanent());
        assert!(err.message().contains("invalid type"), "{err}");
    }
}
