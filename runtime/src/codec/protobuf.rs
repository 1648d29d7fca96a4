//! Protocol Buffers (`protobuf` feature): [`Proto<T>`] carries a `prost` message, and
//! [`ProtobufCodec`] writes and reads its wire format.
//!
//! A handler whose payload is `Proto<T>` decodes and encodes with `ProtobufCodec` unless its
//! `codec` key says otherwise (the payload names its codec: [`NamedCodec`](super::NamedCodec)).
//! `#[millstream::event]` and `#[millstream::command]` go on the prost type itself (with
//! `prost-build`: `config.type_attribute("shop.OrderPlaced", "#[millstream::event]")`); then
//! `Proto<OrderPlaced>` is an event of the same topic, type name and version.
//!
//! ```
//! use millstream::codec::{Codec, Proto, ProtobufCodec};
//!
//! #[derive(Clone, PartialEq, prost::Message)]
//! #[millstream::event(topic = "orders")]
//! struct OrderPlaced {
//!     #[prost(uint64, tag = "1")]
//!     id: u64,
//! }
//!
//! #[millstream::event_handler] // decodes with ProtobufCodec: the payload names it
//! async fn placed(event: Proto<OrderPlaced>) {
//!     let _ = event.id;
//! }
//!
//! let bytes = ProtobufCodec.encode(&Proto(OrderPlaced { id: 7 })).unwrap();
//! assert_eq!(&bytes[..], [8, 7]); // field 1, varint 7: the wire format, nothing around it
//! let back: Proto<OrderPlaced> = ProtobufCodec.decode(&bytes).unwrap();
//! assert_eq!(back.id, 7);
//! ```

use std::fmt;
use std::ops::{Deref, DerefMut};

use bytes::Bytes;
use serde::de::{DeserializeOwned, Visitor};
use serde::ser::Impossible;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Codec, NamedCodec};
use crate::error::{Error, ErrorKind};

/// A protobuf message (any `prost::Message`) as a payload or a published value, encoded by
/// [`ProtobufCodec`]. Derefs to the message. A `Proto<T>` of a command or event type `T` is a
/// command or event of the same topic, type name and version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Proto<T>(pub T);

impl<T> Proto<T> {
    /// The message.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Proto<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Proto<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T> From<T> for Proto<T> {
    fn from(message: T) -> Self {
        Proto(message)
    }
}

impl<T> NamedCodec for Proto<T> {
    type Codec = ProtobufCodec;
}

/// The wire format, as bytes, for [`ProtobufCodec`]'s serializer. A human-readable format (JSON)
/// refuses it: published through a JSON handler or bus it would be a list of numbers that no
/// protobuf reader understands.
impl<T: prost::Message> Serialize for Proto<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return Err(serde::ser::Error::custom(
                "a Proto<T> is encoded by ProtobufCodec: publish it from a handler (or bus) whose codec is ProtobufCodec",
            ));
        }
        serializer.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de, T: prost::Message + Default> Deserialize<'de> for Proto<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Wire<T>(std::marker::PhantomData<T>);

        impl<T: prost::Message + Default> Visitor<'_> for Wire<T> {
            type Value = Proto<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a protobuf message's wire format")
            }

            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Proto<T>, E> {
                T::decode(bytes).map(Proto).map_err(E::custom)
            }
        }

        deserializer.deserialize_bytes(Wire(std::marker::PhantomData))
    }
}

/// Protocol Buffers' wire format (`application/x-protobuf`), for [`Proto<T>`] values: what it
/// encodes is the message's bytes and nothing else, so any protobuf reader of the topic reads it.
/// A value that is not a `Proto<T>` fails to encode, saying so.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProtobufCodec;

impl Codec for ProtobufCodec {
    fn content_type(&self) -> &'static str {
        "application/x-protobuf"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, Error> {
        value
            .serialize(WireOnly)
            .map(crate::message::payload_from_vec)
            .map_err(|NotWire(text)| Error::new(ErrorKind::Encode, text))
    }

    fn decode<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, Error> {
        T::deserialize(Payload(payload)).map_err(|NotWire(text)| Error::new(ErrorKind::Decode, text))
    }
}

/// What is not a protobuf message.
#[derive(Debug)]
struct NotWire(String);

impl fmt::Display for NotWire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotWire {}

impl serde::ser::Error for NotWire {
    fn custom<M: fmt::Display>(message: M) -> Self {
        NotWire(message.to_string())
    }
}

impl serde::de::Error for NotWire {
    fn custom<M: fmt::Display>(message: M) -> Self {
        NotWire(format!("not a valid protobuf message: {message}"))
    }
}

fn not_wire<T>() -> Result<T, NotWire> {
    Err(NotWire(
        "ProtobufCodec encodes protobuf messages only: publish a `millstream::codec::Proto<T>` \
         (`T` a `prost::Message`)"
            .to_owned(),
    ))
}

/// A serializer that takes the bytes a [`Proto`] gives and refuses anything else.
struct WireOnly;

macro_rules! refuse {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<Vec<u8>, NotWire> { not_wire() })*
    };
}

impl Serializer for WireOnly {
    type Ok = Vec<u8>;
    type Error = NotWire;
    type SerializeSeq = Impossible<Vec<u8>, NotWire>;
    type SerializeTuple = Impossible<Vec<u8>, NotWire>;
    type SerializeTupleStruct = Impossible<Vec<u8>, NotWire>;
    type SerializeTupleVariant = Impossible<Vec<u8>, NotWire>;
    type SerializeMap = Impossible<Vec<u8>, NotWire>;
    type SerializeStruct = Impossible<Vec<u8>, NotWire>;
    type SerializeStructVariant = Impossible<Vec<u8>, NotWire>;

    fn serialize_bytes(self, bytes: &[u8]) -> Result<Vec<u8>, NotWire> {
        Ok(bytes.to_vec())
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Vec<u8>, NotWire> {
        value.serialize(self)
    }

    refuse!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Vec<u8>, NotWire> {
        not_wire()
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Vec<u8>, NotWire> {
        not_wire()
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotWire> {
        not_wire()
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotWire> {
        not_wire()
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotWire> {
        not_wire()
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotWire> {
        not_wire()
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotWire> {
        not_wire()
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, NotWire> {
        not_wire()
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotWire> {
        not_wire()
    }
}

/// A payload handed to a [`Proto`] as its bytes.
struct Payload<'a>(&'a [u8]);

impl<'de> Deserializer<'de> for Payload<'_> {
    type Error = NotWire;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotWire> {
        visitor.visit_bytes(self.0)
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, NotWire> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Order {
        #[prost(uint64, tag = "1")]
        id: u64,
        #[prost(string, tag = "2")]
        sku: String,
    }

    #[test]
    fn a_message_round_trips_as_its_wire_format() {
        let order = Order { id: 300, sku: "tea".into() };
        let bytes = ProtobufCodec.encode(&Proto(order.clone())).unwrap();
        assert_eq!(&bytes[..], &prost::Message::encode_to_vec(&order)[..]);
        let back: Proto<Order> = ProtobufCodec.decode(&bytes).unwrap();
        assert_eq!(back.0, order);
    }

    #[test]
    fn json_refuses_a_proto() {
        let error = crate::codec::JsonCodec.encode(&Proto(Order { id: 1, sku: String::new() })).unwrap_err();
        assert!(error.message().contains("a Proto<T> is encoded by ProtobufCodec"), "{error}");
    }

    #[test]
    fn other_values_and_bad_bytes_are_errors_that_say_why() {
        let error = ProtobufCodec.encode(&serde_json::json!({"id": 1})).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Encode);
        assert!(error.message().contains("publish a `millstream::codec::Proto<T>`"), "{error}");
        let error = ProtobufCodec.decode::<Proto<Order>>(&[0x12, 0x05, b'a']).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Decode);
        assert!(error.is_permanent());
        assert!(error.message().contains("not a valid protobuf message"), "{error}");
    }
}
