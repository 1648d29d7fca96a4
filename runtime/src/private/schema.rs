//! The JSON Schema of a handler's payload or output type, when it has one: with the `schema`
//! feature, a type deriving `schemars::JsonSchema` is described by its schema, any other by none.
//! And a payload type's codec, the same way: the one it names, or JSON.
//!
//! The choice is made where the macro names the concrete type, by method resolution through one
//! reference more than the impl for `JsonSchema` types takes (`(&&SchemaOf::<T>::new()).schema()`):
//! the impl on `&SchemaOf<T>` applies when `T: JsonSchema`, the one on `SchemaOf<T>` otherwise.

use std::marker::PhantomData;

use serde_json::Value;

/// Names the type whose schema is wanted.
pub struct SchemaOf<T: ?Sized>(PhantomData<T>);

impl<T: ?Sized> SchemaOf<T> {
    /// For `T`.
    pub const fn new() -> Self {
        SchemaOf(PhantomData)
    }
}

impl<T: ?Sized> Default for SchemaOf<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The schema of a `JsonSchema` type (`schema` feature).
pub trait FromJsonSchema {
    /// The schema.
    fn schema(&self) -> Option<Value>;
}

#[cfg(feature = "schema")]
impl<T: schemars::JsonSchema + ?Sized> FromJsonSchema for &SchemaOf<T> {
    fn schema(&self) -> Option<Value> {
        Some(crate::asyncapi::schema_of::<T>())
    }
}

/// No schema: any other type.
pub trait NoSchema {
    /// `None`.
    fn schema(&self) -> Option<Value>;
}

impl<T: ?Sized> NoSchema for SchemaOf<T> {
    fn schema(&self) -> Option<Value> {
        None
    }
}

/// Names the payload type whose codec is wanted: a handler without a `codec` key uses its
/// payload's [`NamedCodec`](crate::codec::NamedCodec), or JSON. Chosen the same way as the schema
/// (`(&&CodecOf::<T>::new()).codec()`).
pub struct CodecOf<T: ?Sized>(PhantomData<T>);

impl<T: ?Sized> CodecOf<T> {
    /// For `T`.
    pub const fn new() -> Self {
        CodecOf(PhantomData)
    }
}

impl<T: ?Sized> Default for CodecOf<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The codec a payload type names.
pub trait FromNamedCodec {
    /// The codec.
    type Codec;
    /// It.
    fn codec(&self) -> Self::Codec;
}

impl<T: crate::codec::NamedCodec + ?Sized> FromNamedCodec for &CodecOf<T> {
    type Codec = T::Codec;
    fn codec(&self) -> T::Codec {
        T::Codec::default()
    }
}

/// JSON: any other payload type.
pub trait DefaultCodec {
    /// JSON.
    fn codec(&self) -> crate::codec::JsonCodec;
}

impl<T: ?Sized> DefaultCodec for CodecOf<T> {
    fn codec(&self) -> crate::codec::JsonCodec {
        crate::codec::JsonCodec
    }
}
