//! Units of work: a handler argument that opens a transaction around one handler call
//! ([`Tx`](crate::inbox::Tx)) makes the router run the call as a unit: it is begun before the
//! handler runs (and may say the message was handled already), the handler's return values are
//! written inside it, and the delivery is acked only once it has committed.
//!
//! This file holds the contract between the three floors involved: the extractor that asks for a
//! unit ([`FromMessage::UNIT_OF_WORK`](crate::FromMessage::UNIT_OF_WORK)), the endpoint that
//! begins it around the handler call, and the router's worker that commits it with the outputs
//! the middleware chain let through.

use std::any::Any;
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use futures_core::future::BoxFuture;

use crate::context::MessageCx;
use crate::error::Result;
use crate::message::Message;
use crate::state::StateMap;

/// What a begun unit holds (a database transaction), shared between the unit, the extractor
/// that lends it to the handler and the worker that commits it.
#[doc(hidden)]
pub(crate) type Work = Arc<dyn Any + Send + Sync>;

/// A kind of unit of work (one database's transactional inbox). Hidden: implemented by
/// millstream's own extractors.
#[doc(hidden)]
pub trait UnitOfWork: Send + Sync + 'static {
    /// Begins the unit for one delivery of `message`; `None` when the message was handled
    /// already (its unit committed before): the handler is not run and the delivery is acked.
    fn begin<'a>(&'a self, message: &'a Message, cx: MessageCx<'a>) -> BoxFuture<'a, Result<Option<Work>>>;

    /// Writes `outputs` (each with the topic it goes to) inside the unit and commits it.
    fn commit(&self, work: Work, outputs: Vec<(Cow<'static, str>, Message)>) -> BoxFuture<'_, Result<()>>;
}

/// How an extractor names its unit of work: builds it from the application state, once per
/// handler.
#[doc(hidden)]
pub type UnitOfWorkFn = fn(&StateMap) -> Result<Arc<dyn UnitOfWork>>;

/// The first unit of work among an argument list's (a handler takes at most one).
#[doc(hidden)]
pub(crate) const fn first_unit(units: &[Option<UnitOfWorkFn>]) -> Option<UnitOfWorkFn> {
    let mut i = 0;
    while i < units.len() {
        if units[i].is_some() {
            return units[i];
        }
        i += 1;
    }
    None
}

/// How many arguments of a list ask for a unit of work.
#[doc(hidden)]
pub(crate) const fn count_units(units: &[Option<UnitOfWorkFn>]) -> usize {
    let mut i = 0;
    let mut n = 0;
    while i < units.len() {
        if units[i].is_some() {
            n += 1;
        }
        i += 1;
    }
    n
}

/// A unit that ran its handler successfully and waits for the worker to commit it.
pub(crate) type Pending = (Arc<dyn UnitOfWork>, Work);

/// What the endpoint leaves for the worker about one delivery.
#[derive(Default)]
pub(crate) enum Left {
    /// Nothing: the endpoint was not called (a middleware answered), or its call failed.
    #[default]
    Nothing,
    /// A unit it began, whose handler succeeded: to commit.
    Pending(Pending),
    /// The message was handled before: its unit committed then, with its outputs.
    HandledBefore,
}

/// Where the endpoint leaves a unit it began and whose handler succeeded.
pub(crate) type PendingSlot = Arc<Mutex<Left>>;

tokio::task_local! {
    /// The unit of the handler call running in this task, until an extractor takes it.
    static CURRENT: RefCell<Option<Work>>;
    /// Set by the worker around a transactional route's chain.
    static PENDING: PendingSlot;
}

/// Runs `call` (a handler call) with `work` as the unit its extractor takes.
pub(crate) async fn with_current<F: std::future::Future>(work: Work, call: F) -> F::Output {
    CURRENT.scope(RefCell::new(Some(work)), call).await
}

/// Takes the unit of the running handler call (for the extractor that lends it to the
/// handler); `None` outside a unit, or when another argument took it.
#[doc(hidden)]
#[cfg_attr(not(feature = "sql"), allow(dead_code))]
pub(crate) fn take_current() -> Option<Work> {
    CURRENT.try_with(|current| current.borrow_mut().take()).ok().flatten()
}

/// Runs `chain` (a transactional route's middleware chain) so that the unit its endpoint begins
/// is left in `slot` for the worker to commit.
pub(crate) async fn with_pending<F: std::future::Future>(slot: PendingSlot, chain: F) -> F::Output {
    PENDING.scope(slot, chain).await
}

/// Hands a unit whose handler succeeded to the worker, if a worker waits for it; gives it back
/// otherwise (the endpoint was called outside a router and commits it itself).
pub(crate) fn leave_pending(pending: Pending) -> Option<Pending> {
    match PENDING.try_with(Arc::clone) {
        Ok(slot) => {
            *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Left::Pending(pending);
            None
        }
        Err(_) => Some(pending),
    }
}

/// Tells the worker, if one waits, that the message was handled before.
pub(crate) fn leave_handled_before() {
    if let Ok(slot) = PENDING.try_with(Arc::clone) {
        *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Left::HandledBefore;
    }
}

/// Rolls back a unit left for the worker by an earlier call of the handler in this delivery (a
/// middleware that calls the handler again), before the next call begins its own: the earlier
/// one would hold the message's inbox key, and the next call wait for it.
pub(crate) fn drop_pending() {
    if let Ok(slot) = PENDING.try_with(Arc::clone) {
        drop(std::mem::take(&mut *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)));
    }
}
