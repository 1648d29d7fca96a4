//! [`Step`]: what a built-in layer tells the [engine](super::engine) that runs a run of built-in
//! layers as one future.
//!
//! Each built-in layer implements [`Step`] in its own file: what it is ([`Shape`], read once when
//! the chain is built), what it does on the way in ([`enter`](Step::enter): it may refuse the
//! message) and on the way out ([`leave`](Step::leave): it may change the outcome, ask the engine
//! to await a future under the guards of the steps around it, or ask it to run the steps inside
//! again after a delay). Deadlines, panic guards, frames and the order of entering and leaving
//! belong to the engine; adding a built-in layer is one new file implementing this trait.
//!
//! The trait is crate-private. [`Middleware`](super::chain::Middleware) hands a built-in's step
//! to the chain through a hidden method whose return type, [`BuiltIn`], is public in this private
//! module: no code outside millstream can name it, so none can override that method and pass
//! for a built-in (and, say, make the router ack messages before the handler runs).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_core::future::BoxFuture;
use tokio::time::Instant;

use crate::context::RouteInfo;
use crate::error::{Error, ErrorKind};
use crate::handler::HandlerResult;
use crate::message::Message;

/// A built-in layer as the chain receives it (see the [module docs](self)). It can only be made
/// inside millstream.
pub struct BuiltIn(pub(crate) Kind);

/// What a built-in layer is to the chain.
pub(crate) enum Kind {
    /// A step the engine runs, fused with the built-in steps next to it.
    Step(Box<dyn Step>),
    /// A layer that awaits on its way in, so it runs as plain middleware, and counts each
    /// delivery itself ([`CountAttempts`](super::CountAttempts)): the layers inside it decide on
    /// its count, not the backend's.
    CountsAttempts,
}

impl BuiltIn {
    /// The built-in layer `step`.
    pub(crate) fn new(step: impl Step) -> Self {
        BuiltIn(Kind::Step(Box::new(step)))
    }
}

impl fmt::Debug for BuiltIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Step(step) => fmt::Debug::fmt(step, f),
            Kind::CountsAttempts => f.write_str("CountsAttempts"),
        }
    }
}

/// What a step is, declared once: the engine works out from these, when the chain is built,
/// what a message costs on the way through (so the success path walks no steps).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Shape {
    /// [`leave`](Step::leave) needs the message as it entered (to poison it, to run it again, to
    /// read its metadata).
    pub(crate) keeps_message: bool,
    /// [`leave`](Step::leave) may act on a success that has outputs (stamp them); a success
    /// without outputs it passes on unchanged. Without this, the engine calls it only on a failure
    /// (or on what a step inside made of one).
    pub(crate) acts_on_outputs: bool,
    /// Each run of the steps inside must end within this long, counted from the first time it
    /// waits (or, when the step reads the clock, from its entry); see [`Step::expired`].
    pub(crate) deadline: Option<Duration>,
    /// The frame records when the step was first entered ([`Frame::entered`]).
    pub(crate) reads_clock: bool,
    /// A panic inside the step becomes an [`ErrorKind::Panic`] error that it and the steps
    /// around it see.
    pub(crate) catches_panics: bool,
    /// [`enter`](Step::enter) may refuse a message.
    pub(crate) checks_entry: bool,
    /// The router acks each message before the chain runs ([`InstantAck`](super::instant_ack::InstantAck)).
    pub(crate) acks_instantly: bool,
    /// What the handler publishes through `Ctx` carries the correlation id ([`CorrelationId`](super::correlation::CorrelationId)).
    pub(crate) correlates: bool,
    /// The step decides on the delivery's attempt count, so the backend must count attempts
    /// ([`Features::attempts`](crate::pubsub::Features::attempts)): the layer's name, for the
    /// error when it cannot.
    pub(crate) reads_attempts: Option<&'static str>,
}

/// What a step sees of its own state when it is left.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    /// The attempt the step saw when it was entered (a step around it that runs it again raises
    /// it).
    pub(crate) attempt: u32,
    /// How many times the step has asked for the steps inside to run again ([`Leave::Rerun`]).
    pub(crate) reruns: u32,
    /// When the step was first entered, if its [`Shape::reads_clock`].
    pub(crate) entered: Option<Instant>,
    /// When the current run of the steps inside must end (the engine's, from [`Shape::deadline`]).
    pub(crate) deadline: Option<Instant>,
}

impl Frame {
    /// The frame of a step of `shape` entered at `now` as attempt `attempt`; `now` is only read
    /// when the step needs the clock.
    pub(crate) fn entered(attempt: u32, shape: &Shape, mut now: impl FnMut() -> Instant) -> Self {
        let mut frame = Frame { attempt, reruns: 0, entered: None, deadline: None };
        if shape.reads_clock {
            frame.entered = Some(now());
        }
        if let Some(limit) = shape.deadline {
            frame.deadline = Some(now() + limit);
        }
        frame
    }
}

/// What a step leaving may read besides its frame.
#[derive(Clone, Copy)]
pub(crate) struct Cx<'a> {
    /// The message as it entered the step (when its [`Shape::keeps_message`]).
    pub(crate) message: Option<&'a Message>,
    /// The handler's route: its name, topic, publisher.
    pub(crate) route: &'a Arc<RouteInfo>,
}

/// What a step asks of the engine when it is left.
pub(crate) enum Leave {
    /// Hand the outcome (as the step left it) to the step outside.
    Pass,
    /// Await this future under the deadlines and panic guards of the steps outside; its result
    /// is the outcome (a poison publish).
    Await(BoxFuture<'static, HandlerResult>),
    /// Wait this long (under the guards outside), then enter the steps inside again as the next
    /// attempt and run the rest of the chain again (a retry).
    Rerun(Duration),
}

/// A deadline that passed: the error, and who sees it.
pub(crate) struct Expiry {
    pub(crate) error: Error,
    /// The step itself sees the error ([`leave`](Step::leave) is called with it: a retry's
    /// per-attempt limit); otherwise only the steps outside do (a timeout).
    pub(crate) seen_by_itself: bool,
}

/// One built-in layer's behaviour, run by the engine (see the [module docs](self)).
pub(crate) trait Step: Send + Sync + fmt::Debug + 'static {
    /// What the step is.
    fn shape(&self) -> Shape;

    /// Entering the step as attempt `attempt`: an error refuses the message (the steps inside and
    /// the rest of the chain do not run; the steps outside see the error). Called only when the
    /// [`Shape::checks_entry`].
    fn enter(&self, attempt: u32) -> Result<(), Error> {
        let _ = attempt;
        Ok(())
    }

    /// Leaving the step with `outcome`: change it in place, or ask the engine for more.
    fn leave(&self, outcome: &mut HandlerResult, frame: &Frame, cx: &Cx<'_>) -> Leave {
        let _ = (outcome, frame, cx);
        Leave::Pass
    }

    /// The error when the step's [`Shape::deadline`] passes.
    fn expired(&self) -> Expiry {
        let limit = self.shape().deadline.unwrap_or_default();
        Expiry {
            error: Error::new(ErrorKind::Timeout, format!("took longer than {limit:?}")),
            seen_by_itself: false,
        }
    }
}
