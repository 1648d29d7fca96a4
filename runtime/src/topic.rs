//! Typed topics: a [`Topic`] type knows the name of the topic it travels on, and a
//! [`Publishable`] value can be sent by a handler (returned, or through [`Ctx`](crate::Ctx)).
//!
//! Both the extractors (a [`Json<T>`](crate::Json) is publishable) and the handlers read these, so
//! they live below both.

use serde::Serialize;

/// A type bound to a topic name: publishing a value of it goes to that topic, and a handler taking
/// it as payload subscribes to that topic. `#[millstream::topic("name")]` implements it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no topic of its own",
    label = "not a `#[millstream::topic]` type",
    note = "mark the type with `#[millstream::topic(\"name\")]`, or give the handler its topic: `#[millstream::handler(topic = \"name\")]`"
)]
pub trait Topic {
    /// The topic's name.
    const NAME: &'static str;
}

/// A value a handler can return (or [`Ctx::publish`](crate::Ctx::publish)) to be published.
///
/// [`Topic`] types implement it and go to their own topic; [`Json<T>`](crate::Json) wraps any
/// `Serialize` type. For a plain struct published to the handler's publish topic, implement it
/// with an empty body: `impl millstream::Publishable for Invoice {}`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be published by a handler",
    label = "not publishable",
    note = "mark the type with `#[millstream::topic(\"name\")]`, add `impl millstream::Publishable for {Self} {{}}`, or return `Json<{Self}>`"
)]
pub trait Publishable: Serialize + Send + Sync + 'static {
    /// The type's own topic, if it has one.
    const TOPIC: Option<&'static str> = None;
}

impl<T: Topic + Serialize + Send + Sync + 'static> Publishable for T {
    const TOPIC: Option<&'static str> = Some(T::NAME);
}
