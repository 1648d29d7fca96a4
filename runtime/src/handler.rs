//! Typed handlers: the [`Handler`] trait that plain async fns implement, what they may return, and
//! the values they publish.
//!
//! ```
//! use millstream::{Json, Metadata, State};
//! # #[derive(serde::Deserialize)] struct Order { id: u64 }
//! # #[derive(serde::Serialize)] struct Invoice { order: u64 }
//! # impl millstream::Publishable for Invoice {}
//! # #[derive(Clone)] struct Prices;
//!
//! // The first argument is the payload (decoded with the handler's codec); the rest are extractors.
//! async fn bill(order: Order, State(_prices): State<Prices>) -> millstream::Result<Invoice> {
//!     Ok(Invoice { order: order.id })
//! }
//!
//! // No typed payload: every argument is an extractor.
//! async fn audit(event: Json<serde_json::Value>, meta: Metadata) {}
//! ```

use std::borrow::Cow;
use std::future::Future;

use serde::de::DeserializeOwned;
use smallvec::SmallVec;

use crate::codec::Codec;
use crate::context::MessageCx;
use crate::error::{Error, Result};
use crate::extract::FromMessage;
use crate::message::Message;
use crate::state::StateMap;
pub use crate::topic::{Command, Event, MessageKind, MessageType, Publishable, Topic};

/// A message a handler produced, with the topic it goes to (`None`: the handler's publish topic).
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Where it goes; `None` means the handler's publish topic.
    pub topic: Option<Cow<'static, str>>,
    /// The message.
    pub message: Message,
}

/// What a handler (and each middleware) produces: the messages to publish before the input is
/// acked, or the error that nacks it.
pub type HandlerResult = Result<Outputs>;

/// The messages one handler call produced; one lives inline without allocation.
pub type Outputs = SmallVec<[Outgoing; 1]>;

/// Where a handler's return values go, known before the first message (checked when the handler
/// is added to a router).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    /// The handler publishes nothing.
    Nothing,
    /// To the handler's publish topic, which must be set.
    PublishTopic,
    /// To this topic (a [`Topic`] type), unless the handler's publish topic overrides it.
    Topic(&'static str),
}

/// The Ok value of a handler's result: nothing, one value, an optional value, or several.
#[diagnostic::on_unimplemented(
    message = "a handler cannot publish `{Self}`",
    note = "return `()`, a publishable value `T`, `Option<T>` or `Vec<T>`, where `T` is a `#[millstream::topic]` type, `Json<_>`, or implements `millstream::Publishable`"
)]
pub trait IntoOutputs: Send {
    /// Where the values go.
    const SPEC: OutputSpec;

    /// Whether the values carry a delivery time ([`Delayed`]): the app must have a delay store
    /// ([`App::delays`](crate::App::delays)), checked when it is built.
    const DELAYS: bool = false;

    /// Encodes the values with `codec` into `outputs`.
    fn into_outputs<C: Codec>(self, codec: &C, outputs: &mut Outputs) -> Result<()>;
}

fn encode_one<T: Publishable, C: Codec>(value: &T, codec: &C) -> Result<Outgoing> {
    let message = crate::topic::typed_message(codec.encode(value)?, T::IDENTITY);
    Ok(Outgoing { topic: T::TOPIC.map(Cow::Borrowed), message })
}

const fn spec_of<T: Publishable>() -> OutputSpec {
    match T::TOPIC {
        Some(topic) => OutputSpec::Topic(topic),
        None => OutputSpec::PublishTopic,
    }
}

impl IntoOutputs for () {
    const SPEC: OutputSpec = OutputSpec::Nothing;

    #[inline]
    fn into_outputs<C: Codec>(self, _: &C, _: &mut Outputs) -> Result<()> {
        Ok(())
    }
}

impl<T: Publishable> IntoOutputs for T {
    const SPEC: OutputSpec = spec_of::<T>();

    #[inline]
    fn into_outputs<C: Codec>(self, codec: &C, outputs: &mut Outputs) -> Result<()> {
        outputs.push(encode_one(&self, codec)?);
        Ok(())
    }
}

impl<T: Publishable> IntoOutputs for Option<T> {
    const SPEC: OutputSpec = spec_of::<T>();

    #[inline]
    fn into_outputs<C: Codec>(self, codec: &C, outputs: &mut Outputs) -> Result<()> {
        if let Some(value) = self {
            outputs.push(encode_one(&value, codec)?);
        }
        Ok(())
    }
}

impl<T: Publishable> IntoOutputs for Vec<T> {
    const SPEC: OutputSpec = spec_of::<T>();

    fn into_outputs<C: Codec>(self, codec: &C, outputs: &mut Outputs) -> Result<()> {
        outputs.reserve(self.len());
        for value in &self {
            outputs.push(encode_one(value, codec)?);
        }
        Ok(())
    }
}

/// A [`Message`] returned by a handler is published as it is (its id, metadata and payload; not
/// encoded) to the handler's publish topic: a handler that passes messages on unchanged, as the
/// [`Forwarder`](crate::router::Forwarder)'s do.
impl IntoOutputs for Message {
    const SPEC: OutputSpec = OutputSpec::PublishTopic;

    #[inline]
    fn into_outputs<C: Codec>(self, _: &C, outputs: &mut Outputs) -> Result<()> {
        outputs.push(Outgoing { topic: None, message: self });
        Ok(())
    }
}

impl HandlerReturn for Message {
    type Ok = Message;

    #[inline]
    fn into_result(self) -> Result<Message> {
        Ok(self)
    }
}

/// A value to publish later: a handler that returns `Delayed<T>` (or `Option<Delayed<T>>`,
/// `Vec<Delayed<T>>`, in a `Result` or not) publishes `T` when it is due, through the app's
/// delay store ([`App::delays`](crate::App::delays); an app without one refuses to build).
/// The input is acked once the value is stored.
///
/// ```
/// use std::time::Duration;
/// use millstream::Delayed;
/// # #[derive(serde::Deserialize)] struct Order { id: u64 }
/// # #[derive(serde::Serialize)] struct Reminder { order: u64 }
/// # impl millstream::Publishable for Reminder {}
///
/// async fn remind(order: Order) -> Delayed<Reminder> {
///     Delayed::after(Duration::from_secs(24 * 3600), Reminder { order: order.id })
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delayed<T> {
    value: T,
    at: std::time::SystemTime,
}

impl<T> Delayed<T> {
    /// `value`, published `delay` after the handler returns it.
    pub fn after(delay: std::time::Duration, value: T) -> Self {
        Delayed { value, at: std::time::SystemTime::now() + delay }
    }

    /// `value`, published at `when`.
    pub fn at(when: std::time::SystemTime, value: T) -> Self {
        Delayed { value, at: when }
    }

    /// When it is published.
    pub fn due(&self) -> std::time::SystemTime {
        self.at
    }

    /// The value.
    pub fn into_inner(self) -> T {
        self.value
    }
}

fn encode_delayed<T: Publishable, C: Codec>(delayed: &Delayed<T>, codec: &C) -> Result<Outgoing> {
    let Outgoing { topic, message } = encode_one(&delayed.value, codec)?;
    Ok(Outgoing { topic, message: message.deliver_at(delayed.at) })
}

impl<T: Publishable> IntoOutputs for Delayed<T> {
    const SPEC: OutputSpec = spec_of::<T>();
    const DELAYS: bool = true;

    fn into_outputs<C: Codec>(self, codec: &C, outputs: &mut Outputs) -> Result<()> {
        outputs.push(encode_delayed(&self, codec)?);
        Ok(())
    }
}

impl<T: Publishable> IntoOutputs for Option<Delayed<T>> {
    const SPEC: OutputSpec = spec_of::<T>();
    const DELAYS: bool = true;

    fn into_outputs<C: Codec>(self, codec: &C, outputs: &mut Outputs) -> Result<()> {
        if let Some(delayed) = self {
            outputs.push(encode_delayed(&delayed, codec)?);
        }
        Ok(())
    }
}

impl<T: Publishable> IntoOutputs for Vec<Delayed<T>> {
    const SPEC: OutputSpec = spec_of::<T>();
    const DELAYS: bool = true;

    fn into_outputs<C: Codec>(self, codec: &C, outputs: &mut Outputs) -> Result<()> {
        outputs.reserve(self.len());
        for delayed in &self {
            outputs.push(encode_delayed(delayed, codec)?);
        }
        Ok(())
    }
}

impl<T: Publishable> HandlerReturn for Delayed<T> {
    type Ok = Delayed<T>;

    #[inline]
    fn into_result(self) -> Result<Delayed<T>> {
        Ok(self)
    }
}

impl<T: Publishable> HandlerReturn for Option<Delayed<T>> {
    type Ok = Option<Delayed<T>>;

    #[inline]
    fn into_result(self) -> Result<Self> {
        Ok(self)
    }
}

impl<T: Publishable> HandlerReturn for Vec<Delayed<T>> {
    type Ok = Vec<Delayed<T>>;

    #[inline]
    fn into_result(self) -> Result<Self> {
        Ok(self)
    }
}

/// What a handler may return: `()`, `Result<O, E>` (`O` one of [`IntoOutputs`], `E` converting
/// into [`Error`]), or a [`Publishable`] `T`, `Option<T>` or `Vec<T>` directly.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid handler return type",
    label = "not a handler return type",
    note = "return `()`, `Result<(), E>`, `Result<T, E>`, `Result<Option<T>, E>`, `Result<Vec<T>, E>`, `Option<T>` or `Vec<T>`, where `T` is publishable and `E: Into<millstream::Error>`"
)]
pub trait HandlerReturn: Send {
    /// The published values.
    type Ok: IntoOutputs;

    /// Splits into the values to publish or the error.
    fn into_result(self) -> Result<Self::Ok>;
}

impl HandlerReturn for () {
    type Ok = ();

    #[inline]
    fn into_result(self) -> Result<()> {
        Ok(())
    }
}

impl<O: IntoOutputs, E: Into<Error> + Send> HandlerReturn for Result<O, E> {
    type Ok = O;

    #[inline]
    fn into_result(self) -> Result<O> {
        self.map_err(Into::into)
    }
}

impl<T: Publishable> HandlerReturn for T {
    type Ok = T;

    #[inline]
    fn into_result(self) -> Result<T> {
        Ok(self)
    }
}

impl<T: Publishable> HandlerReturn for Option<T> {
    type Ok = Option<T>;

    #[inline]
    fn into_result(self) -> Result<Option<T>> {
        Ok(self)
    }
}

impl<T: Publishable> HandlerReturn for Vec<T> {
    type Ok = Vec<T>;

    #[inline]
    fn into_result(self) -> Result<Vec<T>> {
        Ok(self)
    }
}

/// Where the values of a handler returning `R` go.
pub const fn output_spec<R: HandlerReturn>() -> OutputSpec {
    <R::Ok as IntoOutputs>::SPEC
}

/// Whether the values of a handler returning `R` are delayed ([`Delayed`]).
pub const fn output_delays<R: HandlerReturn>() -> bool {
    <R::Ok as IntoOutputs>::DELAYS
}

/// An async fn usable as a message handler. Implemented for async fns (and closures returning
/// futures) taking the payload and up to 11 extractors, or up to 11 extractors alone; `M` is a
/// marker that tells the shapes apart, never named by users.
///
/// The first argument may be the payload (`T: DeserializeOwned`, decoded with the handler's
/// codec; a payload that does not decode is a permanent error); every other argument implements
/// [`FromMessage`]. The return type implements [`HandlerReturn`].
///
/// A type that is both `DeserializeOwned` and an extractor makes a handler that takes it first
/// ambiguous (rustc asks for type annotations): [`Bytes`](bytes::Bytes) is one when the bytes
/// crate's `serde` feature is on somewhere in the build. Take [`Message`] first instead, or use
/// `#[millstream::handler]`, which decides the payload from the signature.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a millstream handler",
    note = "a handler is an `async fn` whose first argument is the payload (`T: DeserializeOwned`) or an extractor, whose other arguments are extractors (`Json<T>`, `Bytes`, `Metadata`, `MessageId`, `Message`, `Attempt`, `DeliveryInfo`, `State<T>`, `Ctx`), and which returns `()`, `Result<T, E>`, `Option<T>` or `Vec<T>`"
)]
pub trait Handler<M>: Clone + Send + Sync + 'static {
    /// Values computed once per handler by the extractors (state lookups).
    type Prepared: Send + Sync + 'static;

    /// The handler's return type.
    type Return: HandlerReturn;

    /// The unit of work the handler's calls run in, if an argument asks for one
    /// ([`Tx`](crate::inbox::Tx)). Hidden: derived from the arguments.
    #[doc(hidden)]
    const UNIT_OF_WORK: Option<crate::unit::UnitOfWorkFn> = None;

    /// How many arguments ask for a unit of work (more than one is refused when the handler is
    /// added). Hidden: derived from the arguments.
    #[doc(hidden)]
    const UNITS: usize = 0;

    /// Runs every extractor's `prepare`; reports every problem, not just the first.
    fn prepare(state: &StateMap) -> Result<Self::Prepared, Vec<Error>>;

    /// Handles one message: decode, extract, call, encode the outputs.
    fn call<'a, C: Codec>(
        &'a self,
        prepared: &'a Self::Prepared,
        codec: &'a C,
        message: Message,
        cx: MessageCx<'a>,
    ) -> impl Future<Output = HandlerResult> + Send + 'a;
}

/// Marker: the first argument is a decoded payload.
#[doc(hidden)]
#[derive(Debug)]
pub struct WithPayload;

/// Marker: every argument is an extractor.
#[doc(hidden)]
#[derive(Debug)]
pub struct ExtractorsOnly;

/// `result`'s value, or `None` with its error added to `errors` (every problem is reported).
pub(crate) fn collect_prepared<T>(result: Result<T>, errors: &mut Vec<Error>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            errors.push(error);
            None
        }
    }
}

#[inline]
fn finish<R: HandlerReturn, C: Codec>(returned: R, codec: &C) -> HandlerResult {
    let mut outputs = Outputs::new();
    returned.into_result()?.into_outputs(codec, &mut outputs)?;
    Ok(outputs)
}

// One rung per arity: `__for_each_arity!` expands to `impl_handler!(E1, .., EN);` for every
// count `N` of extractors the `#[handler]` macro accepts (the macros crate holds the count).
macro_rules! impl_handler {
    ($($e:ident),*) => {
        #[allow(non_snake_case, unused_variables, unused_mut)]
        impl<F, Fut, P, $($e,)*> Handler<(WithPayload, P, $($e,)*)> for F
        where
            F: Fn(P, $($e,)*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future + Send,
            Fut::Output: HandlerReturn,
            P: DeserializeOwned + Send + 'static,
            $($e: FromMessage,)*
        {
            type Prepared = ($($e::Prepared,)*);
            type Return = Fut::Output;
            const UNIT_OF_WORK: Option<crate::unit::UnitOfWorkFn> =
                crate::unit::first_unit(&[$($e::UNIT_OF_WORK,)*]);
            const UNITS: usize = crate::unit::count_units(&[$($e::UNIT_OF_WORK,)*]);

            fn prepare(state: &StateMap) -> Result<Self::Prepared, Vec<Error>> {
                let mut errors = Vec::new();
                $(let $e = collect_prepared($e::prepare(state), &mut errors);)*
                if !errors.is_empty() {
                    return Err(errors);
                }
                Ok(($($e.expect("checked above"),)*))
            }

            #[inline]
            fn call<'a, C: Codec>(
                &'a self,
                prepared: &'a Self::Prepared,
                codec: &'a C,
                message: Message,
                cx: MessageCx<'a>,
            ) -> impl Future<Output = HandlerResult> + Send + 'a {
                async move {
                    let payload: P = codec.decode(message.payload())?;
                    let ($($e,)*) = prepared;
                    $(let $e = $e::from_message($e, &message, cx)?;)*
                    drop(message);
                    finish((self)(payload, $($e,)*).await, codec)
                }
            }
        }

        #[allow(non_snake_case, unused_variables, unused_mut)]
        impl<F, Fut, $($e,)*> Handler<(ExtractorsOnly, $($e,)*)> for F
        where
            F: Fn($($e,)*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future + Send,
            Fut::Output: HandlerReturn,
            $($e: FromMessage,)*
        {
            type Prepared = ($($e::Prepared,)*);
            type Return = Fut::Output;
            const UNIT_OF_WORK: Option<crate::unit::UnitOfWorkFn> =
                crate::unit::first_unit(&[$($e::UNIT_OF_WORK,)*]);
            const UNITS: usize = crate::unit::count_units(&[$($e::UNIT_OF_WORK,)*]);

            fn prepare(state: &StateMap) -> Result<Self::Prepared, Vec<Error>> {
                let mut errors = Vec::new();
                $(let $e = collect_prepared($e::prepare(state), &mut errors);)*
                if !errors.is_empty() {
                    return Err(errors);
                }
                Ok(($($e.expect("checked above"),)*))
            }

            #[inline]
            fn call<'a, C: Codec>(
                &'a self,
                prepared: &'a Self::Prepared,
                codec: &'a C,
                message: Message,
                cx: MessageCx<'a>,
            ) -> impl Future<Output = HandlerResult> + Send + 'a {
                async move {
                    let ($($e,)*) = prepared;
                    $(let $e = $e::from_message($e, &message, cx)?;)*
                    drop(message);
                    finish((self)($($e,)*).await, codec)
                }
            }
        }
    };
}

millstream_macros::__for_each_arity!(impl_handler);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JsonCodec;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Plain(u32);
    impl Publishable for Plain {}

    #[derive(Serialize)]
    struct Typed(u32);
    impl Topic for Typed {
        const NAME: &'static str = "typed.topic";
    }

    fn run<R: HandlerReturn>(returned: R) -> HandlerResult {
        finish(returned, &JsonCodec)
    }

    fn payloads(outputs: &Outputs) -> Vec<(Option<&str>, &[u8])> {
        outputs.iter().map(|o| (o.topic.as_deref(), &o.message.payload()[..])).collect()
    }

    #[test]
    fn every_return_shape_produces_the_right_outputs() {
        assert!(run(()).unwrap().is_empty());
        assert!(run(Ok::<(), Error>(())).unwrap().is_empty());
        assert!(run(None::<Plain>).unwrap().is_empty());
        assert!(run(Ok::<_, std::io::Error>(None::<Plain>)).unwrap().is_empty());
        assert_eq!(payloads(&run(Some(Plain(1))).unwrap()), [(None, &b"1"[..])]);
        assert_eq!(payloads(&run(Plain(7)).unwrap()), [(None, &b"7"[..])]);
        assert_eq!(
            payloads(&run(Ok::<_, Error>(vec![Typed(1), Typed(2)])).unwrap()),
            [(Some("typed.topic"), &b"1"[..]), (Some("typed.topic"), &b"2"[..])]
        );
        let err = run(Err::<Plain, _>(std::io::Error::other("no"))).unwrap_err();
        assert_eq!(err.to_string(), "no");
    }

    #[test]
    fn output_specs_are_known_before_any_message() {
        assert_eq!(output_spec::<()>(), OutputSpec::Nothing);
        assert_eq!(output_spec::<Result<(), Error>>(), OutputSpec::Nothing);
        assert_eq!(output_spec::<Result<Typed, Error>>(), OutputSpec::Topic("typed.topic"));
        assert_eq!(output_spec::<Vec<Typed>>(), OutputSpec::Topic("typed.topic"));
        assert_eq!(output_spec::<Option<Plain>>(), OutputSpec::PublishTopic);
        assert_eq!(output_spec::<crate::Json<u8>>(), OutputSpec::PublishTopic);
    }
}
