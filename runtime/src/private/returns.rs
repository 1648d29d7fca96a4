//! The bounds on a handler's return type, in the user's terms.
//!
//! `HandlerReturn` alone reports a bad return type as "`Result<Plain, Error>` is not a valid
//! handler return type": the `Result` impl and the impl for a plain publishable value both apply
//! to a `Result`, so rustc cannot say which part failed. The macro therefore takes the return type
//! apart (`validate::Returned` in the macros crate) and passes the route builder two more types,
//! written with the user's own tokens:
//!
//! - `V`, the value it publishes (`Invoice` in `Result<Vec<Invoice>, E>`), bound by [`Encoded`]
//!   ("does not implement `Serialize`") and [`Routed`] ("has no topic to be published to");
//! - `X`, its error type (`E`, or [`ErrorOf<R>`] for `Result<T>` aliases), bound by [`ErrorType`].
//!
//! The return type itself is bound by [`Returns<V, X>`], which proves `HandlerReturn` for the
//! builder and has one impl per shape, so that it fails on the same obligations as the bounds on
//! `V` and `X` (`Plain: Publishable`, `E: HandlerError`). Those are registered first, and rustc
//! keeps one obligation per predicate: each mistake is reported once, on the part at fault, with
//! the words above. A return type that is not taken apart (`()`, a plain value, an alias of a
//! whole return type) comes with `V = X = Whole`, and [`Returns`] reports it as a whole.
//!
//! Every impl here is `#[diagnostic::do_not_recommend]`, so that rustc reports the bound that
//! failed in these words, and not the impls it went through or a list of the other impls.

use crate::error::Error;
use crate::handler::{Delayed, HandlerReturn, IntoOutputs};
use crate::topic::Publishable;

/// Marker for a part of the return type that is not checked on its own: the bounds on it hold.
#[derive(Debug)]
pub enum Whole {}

/// The value a handler returns to publish is encoded into a message.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be published: it does not implement `Serialize`",
    label = "not `Serialize`",
    note = "a returned value is encoded into the message it is published as: derive `Serialize` for `{Self}` (`#[derive(Serialize)]`)"
)]
pub trait Encoded {}

#[diagnostic::do_not_recommend]
impl<T: serde::Serialize> Encoded for T {}

#[diagnostic::do_not_recommend]
impl Encoded for Whole {}

/// The value a handler returns to publish has somewhere to go.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no topic to be published to",
    label = "no topic",
    note = "a returned value goes to the topic of its type: mark `{Self}` with `#[millstream::topic(\"name\")]`",
    note = "or to the handler's `publish` topic: set `#[millstream::handler(publish = \"name\")]` and return `Json<{Self}>`, or, for a type of your own, add `impl millstream::Publishable for {Self} {{}}`"
)]
pub trait Routed {}

#[diagnostic::do_not_recommend]
impl<T: Publishable> Routed for T {}

/// `Result<(), E>` publishes nothing.
#[diagnostic::do_not_recommend]
impl Routed for () {}

#[diagnostic::do_not_recommend]
impl Routed for Whole {}

/// The error type of a handler's `Result`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler's error: it does not convert into `millstream::Error`",
    label = "not convertible into `millstream::Error`",
    note = "return `millstream::Error`, or an error type implementing `std::error::Error + Send + Sync + 'static`"
)]
pub trait HandlerError: Into<Error> + Send {}

#[diagnostic::do_not_recommend]
impl<E: Into<Error> + Send> HandlerError for E {}

/// The bound on the error type the macro names: a [`HandlerError`], or [`Whole`] when there is
/// none to name.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler's error: it does not convert into `millstream::Error`",
    label = "not convertible into `millstream::Error`",
    note = "return `millstream::Error`, or an error type implementing `std::error::Error + Send + Sync + 'static`"
)]
pub trait ErrorType {}

#[diagnostic::do_not_recommend]
impl<E: HandlerError> ErrorType for E {}

#[diagnostic::do_not_recommend]
impl ErrorType for Whole {}

/// The parts of a `Result`, for [`ErrorOf`].
pub trait ResultParts {
    /// The error type.
    type Error;
}

impl<T, E> ResultParts for Result<T, E> {
    type Error = E;
}

/// The error type of `R`, a `Result` alias that does not write it (`millstream::Result<T>`,
/// `anyhow::Result<T>`).
pub type ErrorOf<R> = <R as ResultParts>::Error;

/// A handler's return type `Self`, publishing `V`s, with the error type `X`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be published by a handler",
    label = "not a handler's return type",
    note = "a handler returns `()`, a value to publish `T`, `Option<T>` or `Vec<T>` (of `T` or of `Delayed<T>`), or one of those in a `Result<_, E>` with `E: Into<millstream::Error>`",
    note = "a value is published when it implements `Serialize` and has a topic: its type's `#[millstream::topic]`, or the handler's `publish` topic with `impl millstream::Publishable for T {{}}` or `Json<T>`"
)]
pub trait Returns<V, X>: HandlerReturn {}

/// `()`, a value, or a type alias of a whole return type.
#[diagnostic::do_not_recommend]
impl<R: HandlerReturn> Returns<Whole, Whole> for R {}

#[diagnostic::do_not_recommend]
impl<T: IntoOutputs, E: HandlerError> Returns<T, E> for Result<T, E> {}

#[diagnostic::do_not_recommend]
impl<T: Publishable, E: HandlerError> Returns<T, E> for Result<Option<T>, E> {}

#[diagnostic::do_not_recommend]
impl<T: Publishable, E: HandlerError> Returns<T, E> for Result<Vec<T>, E> {}

#[diagnostic::do_not_recommend]
impl<T: Publishable> Returns<T, Whole> for Option<T> {}

#[diagnostic::do_not_recommend]
impl<T: Publishable> Returns<T, Whole> for Vec<T> {}

// The same shapes of `Delayed<T>`: the macro names `T` as the published value.

#[diagnostic::do_not_recommend]
impl<T: Publishable, E: HandlerError> Returns<T, E> for Result<Delayed<T>, E> {}

#[diagnostic::do_not_recommend]
impl<T: Publishable, E: HandlerError> Returns<T, E> for Result<Option<Delayed<T>>, E> {}

#[diagnostic::do_not_recommend]
impl<T: Publishable, E: HandlerError> Returns<T, E> for Result<Vec<Delayed<T>>, E> {}

#[diagnostic::do_not_recommend]
impl<T: Publishable> Returns<T, Whole> for Delayed<T> {}

#[diagnostic::do_not_recommend]
impl<T: Publishable> Returns<T, Whole> for Option<Delayed<T>> {}

#[diagnostic::do_not_recommend]
impl<T: Publishable> Returns<T, Whole> for Vec<Delayed<T>> {}
