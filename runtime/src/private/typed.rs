//! Typed topics in a handler's keys: `topic = T` checked against the payload, `publish = T`
//! against what the handler returns.

use crate::extract::Json;
use crate::topic::Topic;

/// The topic of a handler declared with `topic = T`, checked against its payload `P`.
pub const fn typed_topic<T: Topic + TopicMatches<P>, P>() -> &'static str {
    T::NAME
}

/// `T` is the payload type `P`: a typed topic is the payload's own type.
#[diagnostic::on_unimplemented(
    message = "the handler's topic type `{Self}` is not its payload type `{P}`",
    label = "the payload is `{P}`",
    note = "a typed topic names the payload's own type; to read `{P}` from another type's topic, give the topic as a string: `topic = \"name\"`"
)]
pub trait TopicMatches<P> {}

impl<T> TopicMatches<T> for T {}

/// The topic of a handler declared with `publish = T`, checked against its return type `R`.
///
/// The check is on the shape of `R` alone: whether `R` can be returned at all is the route
/// builder's bound, reported there once.
pub const fn typed_publish<T: Topic, R: Publishes<T>>() -> &'static str {
    T::NAME
}

/// The values a handler returning `Self` publishes are `T`s: `T`, `Option<T>` or `Vec<T>` (or
/// the same wrapped in `Json`), possibly in a `Result`.
#[diagnostic::on_unimplemented(
    message = "the handler publishes `{Self}`, not `{T}`",
    label = "`publish` names `{T}`",
    note = "`publish = T` sends the handler's `T` return values to `T`'s topic; return `T`, `Option<T>` or `Vec<T>`, or give the topic as a string: `publish = \"name\"`"
)]
pub trait Publishes<T> {}

impl<T> Publishes<T> for T {}
impl<T> Publishes<T> for Option<T> {}
impl<T> Publishes<T> for Vec<T> {}
impl<T> Publishes<T> for Json<T> {}
impl<T> Publishes<T> for Option<Json<T>> {}
impl<T> Publishes<T> for Vec<Json<T>> {}
impl<T, E> Publishes<T> for Result<T, E> {}
impl<T, E> Publishes<T> for Result<Option<T>, E> {}
impl<T, E> Publishes<T> for Result<Vec<T>, E> {}
impl<T, E> Publishes<T> for Result<Json<T>, E> {}
impl<T, E> Publishes<T> for Result<Option<Json<T>>, E> {}
impl<T, E> Publishes<T> for Result<Vec<Json<T>>, E> {}
