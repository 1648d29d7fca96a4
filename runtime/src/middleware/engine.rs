//! The engine that runs a run of consecutive built-in layers as one future.
//!
//! A layer written as `async move { ... next.run(message).await ... }` costs a boxed future, a
//! virtual call and a reference count per message, for every layer. The built-in layers only act
//! on the way in (refuse a message), around the rest of the chain (a deadline, a panic guard) or
//! on the way out (stamp outputs, retry, poison, ignore an error); none changes the message on
//! its way in. A run of them is therefore one [`Segment`] of [`Step`]s, executed by [`run`]: one
//! future for the whole run, the rest of the chain awaited once, under the deadlines and panic
//! guards of the steps around it. What each step does lives in its own file; this one knows only
//! frames, guards, deadlines and the order of entering and leaving.
//!
//! The behaviour is that of the layers nested in order (the first step outermost):
//! - a step's deadline or panic guard covers everything inside it, and when it fires, the steps
//!   inside it are abandoned (like a dropped future) and the steps outside it see the error;
//! - a step that asks to run again ([`Leave::Rerun`], a retry) re-enters the steps inside it,
//!   each with fresh state (a fresh timeout, say);
//! - a step that refuses a message (a redelivery cap) hands its error to the steps outside it.
//!
//! A built-in layer called on its own (through its `Middleware::call`) is a segment of one step,
//! so there is one implementation of each behaviour.

use std::borrow::Cow;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_util::FutureExt;
use smallvec::SmallVec;
use tokio::time::{Instant, Sleep};

use super::step::{Cx, Frame, Leave, Shape, Step};
use crate::context::RouteInfo;
use crate::error::{Error, ErrorKind};
use crate::handler::HandlerResult;
use crate::message::Message;

/// The rest of the chain after a segment, as the engine runs it.
pub(crate) trait Rest {
    /// The attempt the segment was entered with.
    fn attempt(&self) -> u32;

    /// The handler's route.
    fn route(&self) -> &Arc<RouteInfo>;

    /// Runs the rest of the chain as attempt `attempt`.
    fn run(&self, message: Message, attempt: u32) -> BoxFuture<'_, HandlerResult>;

    /// The rest starts with a custom layer (whose `call` runs code before it returns a future);
    /// otherwise with the handler.
    fn starts_with_a_custom_layer(&self) -> bool;
}

/// A run of steps, and what its first attempt needs, worked out once when the chain is built so
/// that a message costs no walk over the steps.
#[derive(Debug)]
pub(crate) struct Segment {
    steps: Box<[Box<dyn Step>]>,
    shapes: Box<[Shape]>,
    /// A step needs the message as it entered.
    keeps_message: bool,
    /// The steps that act on a success with outputs, outermost first.
    on_success: Box<[usize]>,
    /// The innermost step that catches panics.
    recover: Option<usize>,
    /// The shortest deadline of the steps, with its step (on a tie, the inner one: it fires first
    /// when the layers are nested).
    deadline: Option<(Duration, usize)>,
    /// A step reads the clock on the way in.
    reads_clock: bool,
    /// The steps that check a message on the way in, outermost first.
    checks: Box<[usize]>,
}

impl Segment {
    /// The segment of `steps`, outermost first.
    pub(crate) fn new(steps: Vec<Box<dyn Step>>) -> Self {
        let shapes: Box<[Shape]> = steps.iter().map(|step| step.shape()).collect();
        let levels = |has: fn(&Shape) -> bool| -> Box<[usize]> {
            shapes.iter().enumerate().filter(|(_, shape)| has(shape)).map(|(level, _)| level).collect()
        };
        let mut deadline: Option<(Duration, usize)> = None;
        for (level, shape) in shapes.iter().enumerate() {
            if let Some(limit) = shape.deadline {
                if deadline.is_none_or(|(shortest, _)| limit <= shortest) {
                    deadline = Some((limit, level));
                }
            }
        }
        Segment {
            keeps_message: shapes.iter().any(|shape| shape.keeps_message),
            on_success: levels(|shape| shape.acts_on_outputs),
            recover: shapes.iter().rposition(|shape| shape.catches_panics),
            deadline,
            reads_clock: shapes.iter().any(|shape| shape.reads_clock),
            checks: levels(|shape| shape.checks_entry),
            steps: steps.into(),
            shapes,
        }
    }
}

/// Runs `segment` around `rest`.
///
/// The first attempt keeps no per-step state: the steps that check act on the way in, and on a
/// success with outputs only the steps that act on outputs are left. A failure (an error, a deadline, a caught
/// panic, a refusal) goes on in [`recover_from`], boxed: failures are the rare path, and the one
/// that awaits (a backoff, a poison publish).
///
/// `kept`, when given, is a copy of `message` that outlives the run, used instead of a copy of
/// its own.
pub(crate) async fn run<R: Rest>(
    segment: &Segment,
    rest: R,
    message: Message,
    kept: Option<&Message>,
) -> HandlerResult {
    let attempt = rest.attempt();
    let entry = match kept {
        Some(kept) => Some(Cow::Borrowed(kept)),
        None => segment.keeps_message.then(|| Cow::Owned(message.clone())),
    };
    // The clock is read on the way in only for a step that needs it; deadlines otherwise start
    // when the rest of the chain first waits (a message handled at once never reads it).
    let entered = segment.reads_clock.then(Instant::now);
    for &level in segment.checks.iter() {
        if let Err(refusal) = segment.steps[level].enter(attempt) {
            let failure = Failure { entry, entered, outcome: Err(refusal), level, pending: None };
            return Box::pin(recover_from(segment, &rest, failure)).await;
        }
    }
    let deadline = segment.deadline.map(|(limit, step)| {
        let when = match entered {
            Some(entered) => When::At(entered + limit),
            None => When::AfterFirstWait(limit),
        };
        Deadline { when, step }
    });
    let guard = Guard { deadline, recover: segment.recover };
    let chain = match guard.recover {
        Some(level) if rest.starts_with_a_custom_layer() => {
            match start_guarded(&rest, message, attempt, level) {
                Ok(chain) => chain,
                Err((error, level)) => {
                    let failure = Failure { entry, entered, outcome: Err(error), level, pending: None };
                    return Box::pin(recover_from(segment, &rest, failure)).await;
                }
            }
        }
        _ => rest.run(message, attempt),
    };
    let mut guarded = Guarded::new(chain, &segment.steps, guard);
    let result = (&mut guarded).await;
    let entered = entered.or(guarded.waited);
    drop(guarded);
    let (outcome, level) = match result {
        Ok(mut outcome @ Ok(_)) => {
            if segment.on_success.is_empty() || matches!(&outcome, Ok(outputs) if outputs.is_empty()) {
                return outcome;
            }
            // Leave the steps that act on outputs; the others would pass them on unchanged.
            let cx = Cx { message: entry.as_deref(), route: rest.route() };
            let Some((action, level)) = leave_on_success(segment, &mut outcome, attempt, entered, &cx) else {
                return outcome;
            };
            let failure = Failure { entry, entered, outcome, level, pending: Some(action) };
            return Box::pin(recover_from(segment, &rest, failure)).await;
        }
        Ok(Err(error)) => (Err(error), segment.steps.len()),
        Err((error, level)) => (Err(error), level),
    };
    Box::pin(recover_from(segment, &rest, Failure { entry, entered, outcome, level, pending: None })).await
}

/// Leaves the steps that act on outputs, innermost first, until one asks for more than
/// [`Leave::Pass`]: then that, and how many steps (the outermost ones) are still to be left,
/// counting the one that asked.
#[inline]
fn leave_on_success(
    segment: &Segment,
    outcome: &mut HandlerResult,
    attempt: u32,
    entered: Option<Instant>,
    cx: &Cx<'_>,
) -> Option<(Leave, usize)> {
    let frame = Frame { attempt, reruns: 0, entered, deadline: None };
    for &level in segment.on_success.iter().rev() {
        match segment.steps[level].leave(outcome, &frame, cx) {
            Leave::Pass => {}
            action => return Some((action, level + 1)),
        }
    }
    None
}

/// How a first attempt ended, when the steps must be left one by one.
struct Failure<'a> {
    /// The message as it reached the steps (when a step needs it).
    entry: Option<Cow<'a, Message>>,
    /// When the steps were entered (a step read the clock then), or the rest of the chain first
    /// waited; `None`: now.
    entered: Option<Instant>,
    /// The outcome.
    outcome: HandlerResult,
    /// How many steps (the outermost ones) see it.
    level: usize,
    /// What the innermost of them already asked for when it was left (the rest are left as usual).
    pending: Option<Leave>,
}

/// The slow path of [`run`]: the steps that see the outcome are left, innermost first, each
/// acting on it; a rerun enters the steps inside the one that asked for it again and runs the
/// rest of the chain again.
async fn recover_from<R: Rest>(segment: &Segment, rest: &R, failure: Failure<'_>) -> HandlerResult {
    let Failure { entry, entered, mut outcome, level, mut pending } = failure;
    let (steps, shapes) = (&segment.steps[..], &segment.shapes[..]);
    let base = entered.unwrap_or_else(Instant::now);
    let entry = entry.as_deref();
    let mut attempt = rest.attempt();
    // The state the way in left in the steps that see the outcome.
    let mut frames: Frames =
        shapes[..level].iter().map(|shape| Frame::entered(attempt, shape, || base)).collect();

    loop {
        // Leave the steps, innermost first, each acting on the outcome.
        'leave: loop {
            let Some(mut frame) = frames.pop() else { return outcome };
            let level = frames.len();
            let action = match pending.take() {
                Some(action) => action,
                None => steps[level].leave(&mut outcome, &frame, &Cx { message: entry, route: rest.route() }),
            };
            match action {
                Leave::Pass => {}
                Leave::Await(future) => {
                    let guard = Guard::of(shapes, &frames, level);
                    outcome = match Guarded::new(future, steps, guard).await {
                        Ok(result) => result,
                        Err((error, outer)) => {
                            frames.truncate(outer);
                            Err(error)
                        }
                    };
                }
                Leave::Rerun(delay) => {
                    frame.reruns += 1;
                    let sleep = Box::pin(tokio::time::sleep(delay));
                    let guard = Guard::of(shapes, &frames, level);
                    if let Err((error, outer)) = Guarded::new(sleep, steps, guard).await {
                        frames.truncate(outer);
                        outcome = Err(error);
                        continue 'leave;
                    }
                    // Enter the step again: a fresh deadline for the next run inside it.
                    attempt = frame.attempt.saturating_add(frame.reruns);
                    if let Some(limit) = shapes[level].deadline {
                        frame.deadline = Some(Instant::now() + limit);
                    }
                    frames.push(frame);
                    break 'leave;
                }
            }
        }

        // Enter the steps inside the one that reran, outermost first, then run the rest of the
        // chain.
        let mut refused = None;
        let mut now = None;
        while frames.len() < steps.len() {
            let level = frames.len();
            let shape = &shapes[level];
            if shape.checks_entry {
                if let Err(refusal) = steps[level].enter(attempt) {
                    refused = Some(refusal);
                    break;
                }
            }
            frames.push(Frame::entered(attempt, shape, || *now.get_or_insert_with(Instant::now)));
        }
        outcome = match refused {
            Some(refusal) => Err(refusal),
            None => {
                let message = entry.cloned().expect("a step that reruns keeps the message");
                let guard = Guard::of(shapes, &frames, frames.len());
                let started = match guard.recover {
                    Some(level) if rest.starts_with_a_custom_layer() => {
                        start_guarded(rest, message, attempt, level)
                    }
                    _ => Ok(rest.run(message, attempt)),
                };
                let result = match started {
                    Ok(chain) => Guarded::new(chain, steps, guard).await,
                    Err(caught) => Err(caught),
                };
                match result {
                    Ok(result) => result,
                    Err((error, level)) => {
                        frames.truncate(level);
                        Err(error)
                    }
                }
            }
        };
    }
}

/// Starts the rest of the chain under a panic guard at `level`: a panic while its future is made
/// (a custom layer's `call` that panics before it returns a future) is caught like one while it
/// is polled, as it would be by a layer that calls `next.run` inside its own future. (The handler
/// makes its future without running code of its own: only a custom layer needs this.)
#[cold]
fn start_guarded<R: Rest>(
    rest: &R,
    message: Message,
    attempt: u32,
    level: usize,
) -> Result<BoxFuture<'_, HandlerResult>, (Error, usize)> {
    std::panic::catch_unwind(AssertUnwindSafe(|| rest.run(message, attempt)))
        .map_err(|panic| caught(&*panic, level))
}

/// The error of a caught panic, seen by the first `level` steps.
fn caught(panic: &(dyn std::any::Any + Send), level: usize) -> (Error, usize) {
    (Error::new(ErrorKind::Panic, crate::error::panic_text(panic)), level)
}

/// The frames of a run; five live inline (the usual stack: correlation, poison, retry, timeout,
/// recoverer), more spill to the heap.
type Frames = SmallVec<[Frame; 5]>;

/// A deadline of a step.
#[derive(Clone, Copy)]
struct Deadline {
    when: When,
    /// The step it belongs to.
    step: usize,
}

/// When a deadline passes.
#[derive(Clone, Copy)]
enum When {
    At(Instant),
    /// This long after the guarded future first waits: the clock is only read if it does.
    AfterFirstWait(Duration),
}

impl Deadline {
    /// The error when it passes, and how many steps (the outermost ones) see it.
    fn expired(&self, steps: &[Box<dyn Step>]) -> (Error, usize) {
        let expiry = steps[self.step].expired();
        (expiry.error, self.step + usize::from(expiry.seen_by_itself))
    }
}

/// What guards a future awaited inside some steps: their earliest deadline and their innermost
/// panic guard.
#[derive(Clone, Copy, Default)]
struct Guard {
    deadline: Option<Deadline>,
    /// The innermost step that catches panics: the number of steps that see a caught panic.
    recover: Option<usize>,
}

impl Guard {
    /// The guard of the first `depth` steps, from their frames. Of the deadlines the earliest
    /// wins; of two at the same instant, the inner one (it fires first when the layers are nested).
    fn of(shapes: &[Shape], frames: &[Frame], depth: usize) -> Self {
        let mut guard = Guard::default();
        for (level, (shape, frame)) in shapes.iter().zip(frames).take(depth).enumerate() {
            if let Some(when) = frame.deadline {
                let earlier = |d: Deadline| matches!(d.when, When::At(earliest) if when <= earliest);
                if guard.deadline.is_none_or(earlier) {
                    guard.deadline = Some(Deadline { when: When::At(when), step: level });
                }
            }
            if shape.catches_panics {
                guard.recover = Some(level);
            }
        }
        guard
    }
}

/// A future awaited under a [`Guard`]. Fails with the error and the number of steps that see it
/// when the deadline passes or a panic is caught.
struct Guarded<'s, F> {
    future: F,
    steps: &'s [Box<dyn Step>],
    guard: Guard,
    /// Created at the first `Pending`: a handler that finishes at once never touches the timer.
    sleep: Option<Pin<Box<Sleep>>>,
    /// When the future first waited, if a deadline started counting then.
    waited: Option<Instant>,
}

impl<'s, F> Guarded<'s, F> {
    fn new(future: F, steps: &'s [Box<dyn Step>], guard: Guard) -> Self {
        Guarded { future, steps, guard, sleep: None, waited: None }
    }
}

impl<F: Future + Unpin> Future for Guarded<'_, F> {
    type Output = Result<F::Output, (Error, usize)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let polled = match this.guard.recover {
            None => this.future.poll_unpin(cx),
            Some(level) => match std::panic::catch_unwind(AssertUnwindSafe(|| this.future.poll_unpin(cx))) {
                Ok(polled) => polled,
                Err(panic) => return Poll::Ready(Err(caught(&*panic, level))),
            },
        };
        if let Poll::Ready(output) = polled {
            return Poll::Ready(Ok(output));
        }
        if let Some(deadline) = this.guard.deadline {
            let waited = &mut this.waited;
            let sleep = this.sleep.get_or_insert_with(|| {
                let when = match deadline.when {
                    When::At(when) => when,
                    When::AfterFirstWait(limit) => *waited.insert(Instant::now()) + limit,
                };
                Box::pin(tokio::time::sleep_until(when))
            });
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(deadline.expired(this.steps)));
            }
        }
        Poll::Pending
    }
}
