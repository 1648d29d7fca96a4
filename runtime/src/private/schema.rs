//! The JSON Schema of a handler's payload or output type, when it has one: with the `schema`
//! feature, a type deriving `schemars::JsonSchema` is described by its schema, any other by none.
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
