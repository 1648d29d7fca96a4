//! Sagas (process managers): a state per workflow instance, driven by the messages of the
//! workflow, that sends the next commands, keeps compensating commands for when a later step
//! fails, and sets timeouts.
//!
//! ```
//! use std::time::Duration;
//! use millstream::prelude::*;
//! use millstream::Saga;
//!
//! #[derive(Serialize, Deserialize)]
//! #[millstream::event]
//! struct OrderPlaced { order: u64, cents: u64 }
//!
//! #[derive(Serialize, Deserialize)]
//! #[millstream::event]
//! struct PaymentDeclined { order: u64 }
//!
//! #[derive(Serialize, Deserialize)]
//! #[millstream::event]
//! struct PaymentOverdue { order: u64 }
//!
//! #[derive(Serialize, Deserialize)]
//! #[millstream::command]
//! struct ChargeCard { order: u64, cents: u64 }
//!
//! #[derive(Serialize, Deserialize)]
//! #[millstream::command]
//! struct CancelOrder { order: u64 }
//!
//! // The state of one checkout, kept per correlation id.
//! #[derive(Default, Serialize, Deserialize)]
//! #[millstream::saga]
//! struct Checkout { order: u64 }
//!
//! // `start`: a message with no running checkout starts one.
//! #[millstream::saga_handler(start)]
//! async fn placed(saga: &mut Saga<Checkout>, event: OrderPlaced) -> millstream::Result<()> {
//!     saga.order = event.order;
//!     saga.send(&ChargeCard { order: event.order, cents: event.cents })?;
//!     saga.compensate(&CancelOrder { order: event.order })?; // sent if the checkout fails
//!     saga.timeout_after(Duration::from_secs(600), &PaymentOverdue { order: event.order })?;
//!     Ok(())
//! }
//!
//! #[millstream::saga_handler]
//! async fn declined(saga: &mut Saga<Checkout>, _event: PaymentDeclined) {
//!     saga.fail("payment declined"); // sends CancelOrder
//! }
//!
//! #[millstream::saga_handler]
//! async fn overdue(saga: &mut Saga<Checkout>, _event: PaymentOverdue) {
//!     saga.fail("payment overdue");
//! }
//! ```
//!
//! # How a message is handled
//! A saga handler's message belongs to the instance named by its correlation id, or by a field of
//! the message (`#[saga_handler(id = order_id)]`); a `start` handler's message without either
//! starts an instance named by its own id. Everything the saga sends carries the instance's id
//! as its correlation id; with the [`CorrelationId`](crate::middleware::CorrelationId) layer on
//! the app, what the services return carries it back. The store ([`Sagas`], given to the app as state) loads the
//! instance's state, the handler changes it through `&mut Saga<S>` and records what to send,
//! and once the handler returns `Ok` all of it is committed at once: the new state, the id of the
//! message taken, the messages sent, the compensations and timeouts kept. An error commits
//! nothing (the message is retried or poisoned as any handler's).
//!
//! A message is acked **without running the handler** when its instance already took it (a
//! redelivery), when the instance has finished, or when there is no instance and the handler
//! does not start one (logged at debug level).
//!
//! # Stores
//! [`SqlSagaStore`](crate::pubsub::sql::SqlSagaStore) keeps instances in the SQL backend's
//! database and publishes each commit's messages through its outbox in the same transaction.
//! [`MemorySagaStore`] keeps them in the process (tests, development): it publishes a commit's
//! messages before it records the commit, so a crash in between sends them again on redelivery
//! (at least once), and its timeouts do not survive a restart.

mod memory;

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::DynEncoder;
use crate::context::MessageCx;
use crate::error::{Error, ErrorKind, Result};
use crate::extract::{carry, Ctx, FromMessage};
use crate::keys::CORRELATION_ID;
use crate::message::{Message, Metadata};
use crate::pubsub::Publisher;
use crate::state::StateMap;
pub use crate::store::{SagaCommit, SagaDeadline, SagaKey, SagaLoad, SagaMessage, SagaOutcome, SagaStore};
use crate::topic::{typed_message, Command, Event, Topic};

pub use self::memory::MemorySagaStore;

/// A saga's state type, declared with `#[millstream::saga]`: its name keys its instances in the
/// store (renaming the type keeps them when `name = ".."` keeps the name).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a saga state",
    label = "not a `#[millstream::saga]` type",
    note = "declare the state with `#[derive(Default, Serialize, Deserialize)] #[millstream::saga] struct {Self} {{ .. }}`"
)]
pub trait SagaState: Serialize + DeserializeOwned + Default + Send + Sync + 'static {
    /// The saga's name.
    const NAME: &'static str;
}

/// The saga store an app's saga handlers use, given as state:
/// `.state(Sagas::new(SqlSagaStore::new(&pubsub)))` or `.state(Sagas::memory())`.
#[derive(Clone)]
pub struct Sagas(Store);

#[derive(Clone)]
enum Store {
    Shared(Arc<dyn SagaStore>),
    Memory(MemorySagaStore),
}

impl Sagas {
    /// The handlers' store.
    pub fn new(store: impl SagaStore) -> Self {
        Sagas(Store::Shared(Arc::new(store)))
    }

    /// Instances kept in the process ([`MemorySagaStore`]); each step's messages go through its
    /// handler's publisher.
    pub fn memory() -> Self {
        Sagas(Store::Memory(MemorySagaStore::new()))
    }

    /// The in-process store, when this is one.
    pub fn memory_store(&self) -> Option<&MemorySagaStore> {
        match &self.0 {
            Store::Memory(store) => Some(store),
            Store::Shared(_) => None,
        }
    }

    fn start(&self) {
        if let Store::Shared(store) = &self.0 {
            store.start();
        }
    }

    async fn load(&self, key: SagaKey<'_>, message_id: &str) -> Result<SagaLoad> {
        match &self.0 {
            Store::Shared(store) => store.load(key, message_id).await,
            Store::Memory(store) => Ok(store.load(key, message_id)),
        }
    }

    async fn commit(&self, commit: SagaCommit<'_>, publisher: &Arc<dyn Publisher>) -> Result<bool> {
        match &self.0 {
            Store::Shared(store) => store.commit(commit).await,
            Store::Memory(store) => store.commit(commit, publisher).await,
        }
    }
}

impl fmt::Debug for Sagas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sagas").finish_non_exhaustive()
    }
}

/// One saga instance as a handler sees it: its state (through `Deref`/`DerefMut`) and what the
/// handler sends, keeps and decides, committed together when the handler returns `Ok`.
pub struct Saga<S> {
    state: S,
    /// The saga's name and how its state encodes (set where `S: SagaState` is known, so that
    /// committing needs no bound: a type that is not a saga state is reported once).
    name: &'static str,
    encode: fn(&S) -> serde_json::Result<String>,
    id: Box<str>,
    version: Option<u64>,
    message_id: Box<str>,
    sagas: Sagas,
    publisher: Arc<dyn Publisher>,
    encoder: Arc<dyn DynEncoder>,
    carried: Metadata,
    send: Vec<SagaMessage>,
    compensations: Vec<SagaMessage>,
    deadlines: Vec<SagaDeadline>,
    finish: Option<SagaOutcome>,
}

impl<S: SagaState> Saga<S> {
    /// The instance's id: the correlation id of the messages that drive it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this message started the instance.
    pub fn is_new(&self) -> bool {
        self.version.is_none()
    }

    /// The state.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The state, to change.
    pub fn state_mut(&mut self) -> &mut S {
        &mut self.state
    }

    fn message<T: Topic + Serialize>(&self, value: &T) -> Result<SagaMessage> {
        // (A value this step's codec cannot encode never will: permanent.)
        let payload = self.encoder.encode_dyn(value).map_err(Error::into_permanent)?;
        let mut message = typed_message(payload, T::MESSAGE_TYPE);
        carry(&self.carried, &mut message);
        Ok(SagaMessage { topic: T::NAME.to_owned(), message })
    }

    /// Sends `command` to its topic when the step commits.
    pub fn send<C: Command + Serialize>(&mut self, command: &C) -> Result<()> {
        let message = self.message(command)?;
        self.send.push(message);
        Ok(())
    }

    /// Publishes `event` to its topic when the step commits.
    pub fn publish<E: Event + Serialize>(&mut self, event: &E) -> Result<()> {
        let message = self.message(event)?;
        self.send.push(message);
        Ok(())
    }

    /// Keeps `command` to undo what this step did: if the saga [fails](Self::fail) later, the
    /// commands kept are sent, the newest first. Dropped when it completes.
    pub fn compensate<C: Command + Serialize>(&mut self, command: &C) -> Result<()> {
        let message = self.message(command)?;
        self.compensations.push(message);
        Ok(())
    }

    /// Publishes `message` (typically an event the saga handles itself, with its correlation id)
    /// at `due`, unless the saga has finished by then.
    pub fn timeout_at<T: Topic + Serialize>(&mut self, due: SystemTime, message: &T) -> Result<()> {
        let SagaMessage { topic, message } = self.message(message)?;
        self.deadlines.push(SagaDeadline { due, topic, message });
        Ok(())
    }

    /// Publishes `message` after `delay`, unless the saga has finished by then.
    pub fn timeout_after<T: Topic + Serialize>(&mut self, delay: Duration, message: &T) -> Result<()> {
        self.timeout_at(SystemTime::now() + delay, message)
    }

    /// Ends the saga successfully with this step: its kept compensations and pending timeouts
    /// are dropped, its state removed (or archived, as the store keeps it).
    pub fn complete(&mut self) {
        self.finish = Some(SagaOutcome::Completed);
    }

    /// Ends the saga as failed with this step: the compensations kept by this and earlier steps
    /// are sent, the newest first; pending timeouts are dropped.
    pub fn fail(&mut self, reason: impl Into<String>) {
        self.finish = Some(SagaOutcome::Failed(reason.into()));
    }
}

impl<S> Deref for Saga<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.state
    }
}

impl<S> DerefMut for Saga<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.state
    }
}

impl<S: fmt::Debug> fmt::Debug for Saga<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saga")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("version", &self.version)
            .field("send", &self.send.len())
            .field("compensations", &self.compensations.len())
            .field("deadlines", &self.deadlines.len())
            .field("finish", &self.finish)
            .finish()
    }
}

/// The argument the code generated for a `#[millstream::saga_handler]` takes in place of the
/// user's `&mut Saga<S>`: the store and the message's identity, loaded by [`begin`].
#[doc(hidden)]
pub struct SagaInput<S> {
    sagas: Sagas,
    message_id: Box<str>,
    correlation: Option<Box<str>>,
    publisher: Arc<dyn Publisher>,
    encoder: Arc<dyn DynEncoder>,
    carried: Metadata,
    handler: Arc<str>,
    state: PhantomData<fn() -> S>,
}

// (No `SagaState` bound here: a step's state type that is not one is reported once, by `begin`.)
impl<S: Send + 'static> FromMessage for SagaInput<S> {
    type Prepared = Sagas;

    fn prepare(state: &StateMap) -> Result<Sagas> {
        let sagas = state.get::<Sagas>().cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "saga `{}` has no store: add one with `.state(Sagas::new(SqlSagaStore::new(&pubsub)))` \
                     or `.state(Sagas::memory())`",
                    std::any::type_name::<S>()
                ),
            )
        })?;
        sagas.start();
        Ok(sagas)
    }

    fn from_message(sagas: &Sagas, message: &Message, cx: MessageCx<'_>) -> Result<Self> {
        let correlation = message.metadata().get(CORRELATION_ID).map(Box::from);
        let (route, carried) = Ctx::new(message, cx).into_parts();
        Ok(SagaInput {
            sagas: sagas.clone(),
            message_id: message.id().to_boxed_str(),
            correlation,
            publisher: route.publisher.clone(),
            encoder: route.encoder.clone(),
            carried,
            handler: route.name.clone(),
            state: PhantomData,
        })
    }
}

/// Loads the instance a message belongs to: `None` when the handler is not to run (see the
/// module's docs).
#[doc(hidden)]
pub async fn begin<S: SagaState>(
    input: SagaInput<S>,
    start: bool,
    id: Option<String>,
) -> Result<Option<Saga<S>>> {
    let SagaInput { sagas, message_id, correlation, publisher, encoder, mut carried, handler, .. } = input;
    let id = match id.map(String::into_boxed_str).or(correlation) {
        Some(id) => id,
        None if start => message_id.clone(),
        None => {
            tracing::debug!(saga = S::NAME, %handler, message = %message_id, "saga: a message without a correlation id; acked unhandled");
            return Ok(None);
        }
    };
    let key = SagaKey { saga: S::NAME, id: &id };
    let (state, version) = match sagas.load(key, &message_id).await? {
        SagaLoad::Absent if start => (S::default(), None),
        SagaLoad::Absent => {
            tracing::debug!(saga = S::NAME, id = %id, %handler, "saga: no running instance; acked unhandled");
            return Ok(None);
        }
        // A start message for a finished instance: a redelivery, or a new flow reusing an id (lost
        // to this saga: said at warn level).
        SagaLoad::Finished(outcome) if start => {
            tracing::warn!(saga = S::NAME, id = %id, %handler, message = %message_id, ?outcome, "saga: a start message for an instance that finished; acked unhandled (a redelivery, or an id used twice)");
            return Ok(None);
        }
        SagaLoad::Finished(outcome) => {
            tracing::debug!(saga = S::NAME, id = %id, %handler, ?outcome, "saga: instance finished; acked unhandled");
            return Ok(None);
        }
        SagaLoad::Running { seen: true, .. } => {
            tracing::debug!(saga = S::NAME, id = %id, %handler, message = %message_id, "saga: message already taken; acked");
            return Ok(None);
        }
        SagaLoad::Running { state, version, seen: false } => {
            let state = serde_json::from_str(&state).map_err(|error| {
                Error::new(
                    ErrorKind::Decode,
                    format!(
                        "the state of saga {} instance {id} does not decode as its type: {error}",
                        S::NAME
                    ),
                )
            })?;
            (state, Some(version))
        }
    };
    carried.insert_static(CORRELATION_ID, id.clone());
    Ok(Some(Saga {
        state,
        name: S::NAME,
        encode: |state| serde_json::to_string(state),
        id,
        version,
        message_id,
        sagas,
        publisher,
        encoder,
        carried,
        send: Vec::new(),
        compensations: Vec::new(),
        deadlines: Vec::new(),
        finish: None,
    }))
}

/// What a saga handler may return: `()` or `Result<(), E>`; what it sends goes through the
/// [`Saga`].
#[diagnostic::on_unimplemented(
    message = "a saga handler cannot return `{Self}`",
    label = "not `()` or `Result<(), E>`",
    note = "a saga handler returns `()` or `Result<(), E>` (`E: Into<millstream::Error>`); it sends commands with `saga.send(&command)`"
)]
pub trait SagaReturn: Send {
    /// The error, if any.
    fn into_result(self) -> Result<()>;
}

impl SagaReturn for () {
    fn into_result(self) -> Result<()> {
        Ok(())
    }
}

impl<E: Into<Error> + Send> SagaReturn for std::result::Result<(), E> {
    fn into_result(self) -> Result<()> {
        self.map_err(Into::into)
    }
}

/// Commits what the handler did, if it returned `Ok`. A conflict (another message of the same
/// instance committed first) is a transient error: the message is redelivered and runs against
/// the new state.
#[doc(hidden)]
pub async fn finish<S, R: SagaReturn>(saga: Saga<S>, returned: R) -> Result<()> {
    returned.into_result()?;
    let state = (saga.encode)(&saga.state).map_err(|error| {
        Error::new(
            ErrorKind::Encode,
            format!("the state of saga {} does not encode as JSON: {error}", saga.name),
        )
        .into_permanent()
    })?;
    let commit = SagaCommit {
        key: SagaKey { saga: saga.name, id: &saga.id },
        message_id: &saga.message_id,
        version: saga.version,
        state,
        send: saga.send,
        compensations: saga.compensations,
        deadlines: saga.deadlines,
        finish: saga.finish,
    };
    if saga.sagas.commit(commit, &saga.publisher).await? {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Backend,
            format!(
                "saga {} instance {}: another message of the instance committed first; redelivered to run again",
                saga.name,
                saga.id
            ),
        )
        .retry_after(Duration::from_millis(10)))
    }
}
