//! Batch handlers: an async fn that takes `Vec<T>` handles up to `batch_size` messages at once,
//! gathered for at most `linger` ([`Route::batch`](crate::Route::batch), or
//! `#[millstream::handler(batch = 100, linger = "50ms")]`), and says what became of each one with
//! a [`BatchResult`].
//!
//! ```
//! use millstream::{BatchResult, Error, State};
//! # #[derive(serde::Deserialize)] struct Reading { sensor: u32, value: f64 }
//! # #[derive(Clone)] struct Db;
//! # impl Db { async fn insert_many(&self, _: &[Reading]) -> Result<(), Error> { Ok(()) } }
//!
//! // All or nothing: an error fails every message of the batch.
//! async fn store(readings: Vec<Reading>, State(db): State<Db>) -> Result<(), Error> {
//!     db.insert_many(&readings).await
//! }
//!
//! // Message by message: the indices are those of the `Vec` the handler got.
//! async fn check(readings: Vec<Reading>) -> BatchResult {
//!     let mut result = BatchResult::ok();
//!     for (i, reading) in readings.iter().enumerate() {
//!         if reading.value.is_nan() {
//!             result = result.fail(i, Error::permanent("not a number")); // to the poison topic
//!         }
//!     }
//!     result
//! }
//! ```

use std::future::Future;

use serde::de::DeserializeOwned;

use crate::codec::Codec;
use crate::error::{Error, ErrorKind, Result};
use crate::extract::State;
use crate::handler::{IntoOutputs, OutputSpec, Outputs};
use crate::message::Message;
use crate::state::StateMap;

/// What a batch handler made of its batch: the values it publishes (all of them published before
/// any message is acked) and the messages that failed, by their index in the batch it was given.
///
/// A failed message goes the way of a failed single message: a transient error nacks it (it comes
/// again, in a later batch), a permanent one sends it to the poison topic. Every other message of
/// the batch is acked.
#[derive(Debug)]
#[must_use = "a BatchResult says which messages failed: return it"]
pub struct BatchResult<O = ()> {
    outputs: O,
    failures: Vec<(usize, Error)>,
}

impl BatchResult<()> {
    /// Every message handled, nothing to publish.
    pub fn ok() -> Self {
        BatchResult { outputs: (), failures: Vec::new() }
    }
}

impl Default for BatchResult<()> {
    fn default() -> Self {
        BatchResult::ok()
    }
}

impl<O> BatchResult<O> {
    /// Every message handled; `outputs` (any handler return value: `T`, `Option<T>`, `Vec<T>`)
    /// are published.
    pub fn with_outputs(outputs: O) -> Self {
        BatchResult { outputs, failures: Vec::new() }
    }

    /// Marks message `index` (of the batch the handler got) as failed with `error`. A second
    /// failure of the same message is ignored; an index past the batch fails the whole batch
    /// (transient: a bug, not the messages').
    pub fn fail(mut self, index: usize, error: impl Into<Error>) -> Self {
        if !self.failures.iter().any(|(i, _)| *i == index) {
            self.failures.push((index, error.into()));
        }
        self
    }

    /// The failures so far, by index.
    pub fn failures(&self) -> &[(usize, Error)] {
        &self.failures
    }
}

/// The messages of a batch that failed: each one's index in the batch, and its error.
pub type Failures = Vec<(usize, Error)>;

/// What a batch handler may return: `()`, a publishable value (`T`, `Option<T>`, `Vec<T>`), a
/// [`BatchResult`], or a `Result` of one of these (an `Err` fails every message of the batch).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid batch handler return type",
    label = "not a batch handler return type",
    note = "return `()`, `Result<(), E>`, `BatchResult<O>`, `Result<BatchResult<O>, E>`, or values to publish (`Result<Vec<T>, E>`, ...)"
)]
pub trait BatchReturn: Send {
    /// The published values.
    type Ok: IntoOutputs;

    /// The values and the failed messages' indices, or the error that fails the whole batch.
    fn into_batch(self) -> Result<(Self::Ok, Failures)>;
}

impl BatchReturn for () {
    type Ok = ();

    fn into_batch(self) -> Result<((), Failures)> {
        Ok(((), Vec::new()))
    }
}

impl<T: crate::topic::Publishable> BatchReturn for Vec<T> {
    type Ok = Vec<T>;

    fn into_batch(self) -> Result<(Vec<T>, Failures)> {
        Ok((self, Vec::new()))
    }
}

impl<O: IntoOutputs, E: Into<Error> + Send> BatchReturn for std::result::Result<O, E> {
    type Ok = O;

    fn into_batch(self) -> Result<(O, Failures)> {
        self.map(|outputs| (outputs, Vec::new())).map_err(Into::into)
    }
}

impl<O: IntoOutputs> BatchReturn for BatchResult<O> {
    type Ok = O;

    fn into_batch(self) -> Result<(O, Failures)> {
        Ok((self.outputs, self.failures))
    }
}

impl<O: IntoOutputs, E: Into<Error> + Send> BatchReturn for std::result::Result<BatchResult<O>, E> {
    type Ok = O;

    fn into_batch(self) -> Result<(O, Failures)> {
        self.map_err(Into::into)?.into_batch()
    }
}

/// Where the values of a batch handler returning `R` go.
pub const fn batch_output_spec<R: BatchReturn>() -> OutputSpec {
    <R::Ok as IntoOutputs>::SPEC
}

/// A batch handler's argument after the payloads: built once per batch, not from a message.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an argument of a batch handler",
    label = "not a batch argument",
    note = "a batch handler takes `Vec<T>` (the payloads) and then `State<T>` arguments only: per-message extractors (`Metadata`, `MessageId`, `Ctx`, ...) have one value per message"
)]
pub trait FromBatch: Sized + Send + 'static {
    /// What `prepare` computes once per handler.
    type Prepared: Send + Sync + 'static;

    /// Runs once per handler, with the application state.
    fn prepare(state: &StateMap) -> Result<Self::Prepared>;

    /// Builds the argument for one batch.
    fn from_batch(prepared: &Self::Prepared) -> Result<Self>;
}

impl<T: Clone + Send + Sync + 'static> FromBatch for State<T> {
    type Prepared = T;

    fn prepare(state: &StateMap) -> Result<T> {
        <State<T> as crate::extract::FromMessage>::prepare(state)
    }

    fn from_batch(prepared: &T) -> Result<Self> {
        Ok(State(prepared.clone()))
    }
}

/// What one batch came to: the values to publish, and the messages that failed, by their index
/// in the batch as it was delivered.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub(crate) outputs: Outputs,
    pub(crate) failures: Vec<(usize, Error)>,
}

/// An async fn usable as a batch handler: `Vec<T>` first (`T: DeserializeOwned`, each message's
/// payload decoded with the handler's codec; one that does not decode goes to the poison topic
/// and is left out of the batch), then up to three [`FromBatch`] arguments (`State<S>`); it
/// returns a [`BatchReturn`]. `M` tells the shapes apart, never named by users.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a millstream batch handler",
    note = "a batch handler is an `async fn` taking `Vec<T>` (`T: DeserializeOwned`) and up to three `State<S>`, returning `()`, `Result<(), E>`, `BatchResult<O>` or values to publish"
)]
pub trait BatchHandler<M>: Clone + Send + Sync + 'static {
    /// Values computed once per handler by the arguments (state lookups).
    type Prepared: Send + Sync + 'static;

    /// The handler's return type.
    type Return: BatchReturn;

    /// Runs every argument's `prepare`; reports every problem.
    fn prepare(state: &StateMap) -> Result<Self::Prepared, Vec<Error>>;

    /// Handles one batch: decode, call, encode the outputs.
    #[doc(hidden)]
    fn call<'a, C: Codec>(
        &'a self,
        prepared: &'a Self::Prepared,
        codec: &'a C,
        messages: Vec<Message>,
    ) -> impl Future<Output = Result<BatchOutcome>> + Send + 'a;
}

/// Decodes each payload: the values, each one's index in the batch, and the failures.
fn decode_all<T: DeserializeOwned, C: Codec>(
    codec: &C,
    messages: Vec<Message>,
) -> (Vec<T>, Vec<usize>, Vec<(usize, Error)>) {
    let mut values = Vec::with_capacity(messages.len());
    let mut positions = Vec::with_capacity(messages.len());
    let mut failures = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        match codec.decode::<T>(message.payload()) {
            Ok(value) => {
                values.push(value);
                positions.push(i);
            }
            Err(error) => failures.push((i, error)),
        }
    }
    (values, positions, failures)
}

/// Encodes what the handler returned and maps its failures' indices back to the batch's.
fn finish_batch<R: BatchReturn, C: Codec>(
    returned: R,
    codec: &C,
    positions: &[usize],
    mut failures: Vec<(usize, Error)>,
) -> Result<BatchOutcome> {
    let (ok, failed) = returned.into_batch()?;
    for (index, error) in failed {
        let Some(&at) = positions.get(index) else {
            return Err(Error::new(
                ErrorKind::Handler,
                format!("the batch handler failed message {index} of a batch of {}", positions.len()),
            ));
        };
        failures.push((at, error));
    }
    let mut outputs = Outputs::new();
    ok.into_outputs(codec, &mut outputs)?;
    Ok(BatchOutcome { outputs, failures })
}

macro_rules! impl_batch_handler {
    ($($e:ident),*) => {
        #[allow(non_snake_case, unused_variables, unused_mut)]
        impl<F, Fut, T, $($e,)*> BatchHandler<(Vec<T>, $($e,)*)> for F
        where
            F: Fn(Vec<T>, $($e,)*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future + Send,
            Fut::Output: BatchReturn,
            T: DeserializeOwned + Send + 'static,
            $($e: FromBatch,)*
        {
            type Prepared = ($($e::Prepared,)*);
            type Return = Fut::Output;

            fn prepare(state: &StateMap) -> Result<Self::Prepared, Vec<Error>> {
                let mut errors = Vec::new();
                $(let $e = crate::handler::collect_prepared($e::prepare(state), &mut errors);)*
                if !errors.is_empty() {
                    return Err(errors);
                }
                Ok(($($e.expect("checked above"),)*))
            }

            fn call<'a, C: Codec>(
                &'a self,
                prepared: &'a Self::Prepared,
                codec: &'a C,
                messages: Vec<Message>,
            ) -> impl Future<Output = Result<BatchOutcome>> + Send + 'a {
                async move {
                    let (values, positions, failures) = decode_all::<T, C>(codec, messages);
                    if values.is_empty() {
                        return Ok(BatchOutcome { outputs: Outputs::new(), failures });
                    }
                    let ($($e,)*) = prepared;
                    $(let $e = $e::from_batch($e)?;)*
                    finish_batch((self)(values, $($e,)*).await, codec, &positions, failures)
                }
            }
        }
    };
}

impl_batch_handler!();
impl_batch_handler!(E1);
impl_batch_handler!(E1, E2);
impl_batch_handler!(E1, E2, E3);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JsonCodec;

    fn run<R: BatchReturn>(returned: R, positions: &[usize]) -> Result<BatchOutcome> {
        finish_batch(returned, &JsonCodec, positions, Vec::new())
    }

    #[test]
    fn failures_map_back_to_the_delivered_batch() {
        // The handler got messages 0, 2 and 3 of the batch (1 did not decode).
        let outcome =
            run(BatchResult::ok().fail(1, Error::msg("x")).fail(1, Error::msg("again")), &[0, 2, 3]).unwrap();
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!((outcome.failures[0].0, outcome.failures[0].1.message()), (2, "x"));
        let error = run(BatchResult::ok().fail(3, Error::msg("x")), &[0, 2, 3]).unwrap_err();
        assert!(error.message().contains("message 3 of a batch of 3"), "{error}");
        assert!(!error.is_permanent());
    }

    #[test]
    fn every_return_shape_is_a_batch_return() {
        assert!(run((), &[0]).unwrap().failures.is_empty());
        assert!(run(Err::<(), _>(Error::msg("all")), &[0]).is_err());
        let outcome = run(Ok::<_, Error>(vec![crate::Json(1), crate::Json(2)]), &[0, 1]).unwrap();
        assert_eq!(outcome.outputs.len(), 2);
        let outcome = run(BatchResult::with_outputs(Some(crate::Json(3))), &[0]).unwrap();
        assert_eq!(&outcome.outputs[0].message.payload()[..], b"3");
        assert_eq!(batch_output_spec::<BatchResult>(), OutputSpec::Nothing);
        assert_eq!(batch_output_spec::<Vec<crate::Json<u8>>>(), OutputSpec::PublishTopic);
    }
}
