//! The built-in layers run as *steps* of one future.
//!
//! A layer written as `async move { ... next.run(message).await ... }` costs a boxed future, a
//! virtual call and a reference count per message, for every layer. The built-in layers only act
//! before the rest of the chain runs (start a clock, refuse a message), while it runs (a deadline,
//! catching a panic), or after it returns (stamp outputs, retry, poison, ignore an error); none
//! changes the message on its way in. A run of consecutive built-in layers is therefore one
//! [`Step`] list, executed by [`run`]: one future for the whole run, the rest of the chain awaited
//! once, under the deadlines and panic guards of the steps around it.
//!
//! The behaviour is that of the layers nested in order (the first step outermost):
//! - a step's deadline or panic guard covers everything inside it, and when it fires, the steps
//!   inside it are abandoned (like a dropped future) and the steps outside it see the error;
//! - a retry re-runs the steps inside it, each with its fresh state (a fresh timeout, say);
//! - a step that refuses a message (the redelivery cap) hands its error to the steps outside it.
//!
//! Each built-in middleware's own [`Middleware::call`](super::Middleware::call) runs its single
//! step through the same code, so there is one implementation of each behaviour.

use std::borrow::Cow;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use smallvec::SmallVec;
use tokio::time::{Instant, Sleep};

use std::sync::Arc;

use futures_core::future::BoxFuture;

use super::{Chain, DelayOnNack, IgnoreErrors, Next, PoisonQueue, Retry, RetryEvent};
use crate::error::{Error, ErrorKind};
use crate::handler::{HandlerResult, Outputs};
use crate::keys::CORRELATION_ID;
use crate::message::{Message, MessageId, Metadata};

/// What one built-in layer does, as a step of a fused run.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// [`CorrelationId`](super::CorrelationId).
    Correlation,
    /// [`PoisonQueue`].
    Poison(PoisonQueue),
    /// [`Retry`].
    Retry(Retry),
    /// [`Timeout`](super::Timeout) with its limit.
    Timeout(Duration),
    /// [`Recoverer`](super::Recoverer).
    Recover,
    /// [`RedeliveryCap`](super::RedeliveryCap) with its maximum.
    Cap(u32),
    /// [`IgnoreErrors`].
    Ignore(IgnoreErrors),
    /// [`DelayOnNack`].
    DelayOnNack(DelayOnNack),
    /// A layer that does nothing per message ([`InstantAck`](super::InstantAck): the router acts
    /// on it before the chain runs).
    Pass,
}

impl Step {
    /// Whether the step needs the message back after a failure (to poison it, to retry it).
    fn keeps_message(&self) -> bool {
        matches!(self, Step::Poison(_) | Step::Retry(_))
    }
}

/// A fused run: its steps, and what its first attempt needs, worked out once when the chain is
/// built so that a message costs no walk over the steps.
#[derive(Debug)]
pub(crate) struct Segment {
    steps: Box<[Step]>,
    /// A step needs the message back after a failure.
    keeps_message: bool,
    /// A correlation step stamps the outputs.
    correlates: bool,
    /// The innermost recoverer.
    recover: Option<usize>,
    /// The shortest limit of a timeout step or a retry's first attempt, with its step (on a tie,
    /// the inner one: it fires first when the layers are nested).
    deadline: Option<(Duration, usize)>,
    /// A step reads the clock on the way in (a retry's elapsed-time limit).
    reads_clock: bool,
    /// The redelivery caps, outermost first: `(step, max)`.
    caps: Box<[(usize, u32)]>,
}

impl Segment {
    pub(crate) fn new(steps: Vec<Step>) -> Self {
        let mut deadline: Option<(Duration, usize)> = None;
        let mut offer = |limit: Duration, level: usize| {
            if deadline.is_none_or(|(shortest, _)| limit <= shortest) {
                deadline = Some((limit, level));
            }
        };
        let mut recover = None;
        let mut caps = Vec::new();
        let mut elapsed_limit = false;
        for (level, step) in steps.iter().enumerate() {
            match step {
                Step::Timeout(limit) => offer(*limit, level),
                Step::Retry(retry) => {
                    if let Some(limit) = retry.attempt_limit() {
                        offer(limit, level);
                    }
                    elapsed_limit |= retry.max_elapsed_limit().is_some();
                }
                Step::Recover => recover = Some(level),
                Step::Cap(max) => caps.push((level, *max)),
                _ => {}
            }
        }
        Segment {
            keeps_message: steps.iter().any(Step::keeps_message),
            correlates: steps.iter().any(|step| matches!(step, Step::Correlation)),
            recover,
            deadline,
            reads_clock: elapsed_limit,
            caps: caps.into(),
            steps: steps.into(),
        }
    }
}

/// The rest of the chain after a fused run, borrowed: a reference count is only taken when the
/// rest must be handed on (to a custom layer, to a poison publish).
#[derive(Clone, Copy)]
pub(crate) struct Inner<'a> {
    pub(crate) chain: &'a Arc<Chain>,
    pub(crate) index: usize,
    pub(crate) attempt: u32,
}

impl Inner<'_> {
    fn handler_name(&self) -> &str {
        &self.chain.route.name
    }

    /// The rest of the chain as a [`Next`] of its own.
    fn to_next(self, attempt: u32) -> Next {
        Next { chain: self.chain.clone(), index: self.index, attempt }
    }

    /// Runs the rest of the chain as attempt `attempt`; the handler alone is called in place.
    fn run(&self, message: Message, attempt: u32) -> BoxFuture<'_, HandlerResult> {
        if self.index == self.chain.layer_count() {
            return self.chain.call_handler(message, attempt);
        }
        self.to_next(attempt).run(message)
    }
}

/// A built-in layer's description of itself as a step; see [`Middleware::fused_step`](super::Middleware::fused_step).
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct FusedStep(pub(crate) Step);

impl FusedStep {
    /// Whether this is the [`CorrelationId`](super::CorrelationId) layer.
    pub(crate) fn correlates(&self) -> bool {
        matches!(self.0, Step::Correlation)
    }
}

/// What one step keeps while the steps inside it run (on the failure path).
struct Frame {
    /// The attempt this step sees (a retry outside it raises it).
    attempt: u32,
    /// Retries done so far (a retry step).
    retries: u32,
    /// When this step's deadline passes: a timeout step's, or a retry's current attempt's.
    deadline: Option<Instant>,
    /// When the first attempt started (a retry with a limit on the elapsed time).
    started: Option<Instant>,
}

impl Frame {
    fn new(attempt: u32) -> Self {
        Frame { attempt, retries: 0, deadline: None, started: None }
    }
}

/// The frames of a run; five live inline (the usual stack: correlation, poison, retry, timeout,
/// recoverer), more spill to the heap.
type Frames = SmallVec<[Frame; 5]>;

/// What the correlation step needs to stamp the outputs: the input's metadata (a reference
/// count) and its id.
struct Correlation {
    metadata: Metadata,
    id: MessageId,
}

impl Correlation {
    fn of(message: &Message) -> Self {
        Correlation { metadata: message.metadata().clone(), id: message.id() }
    }

    /// Copies the input's correlation id (its own id when it has none) onto every output that
    /// has none.
    fn stamp(&self, outputs: &mut Outputs) {
        let mut formatted = None;
        for output in outputs {
            if output.message.metadata().contains_key(CORRELATION_ID) {
                continue;
            }
            let value: Box<str> = match self.metadata.get(CORRELATION_ID) {
                Some(id) => id.into(),
                None => formatted.get_or_insert_with(|| self.id.to_boxed_str()).clone(),
            };
            output.message.metadata_mut().insert_static(CORRELATION_ID, value);
        }
    }
}

/// Reads the clock once for all the steps entered together.
fn clock(now: &mut Option<Instant>) -> Instant {
    *now.get_or_insert_with(Instant::now)
}

/// Runs the fused run of the chain just before `inner` around it.
pub(crate) async fn run_chained(inner: Next, message: Message) -> HandlerResult {
    let segment = inner.chain.segment(inner.index - 1);
    let rest = Inner { chain: &inner.chain, index: inner.index, attempt: inner.attempt };
    run(segment, rest, message, None).await
}

/// Runs `steps` around `inner` (the rest of the chain after them).
///
/// The first attempt keeps no per-step state: the steps act on the way in, and on a success only
/// the correlation step acts on the way out. A failure (an error, a deadline, a caught panic, a
/// refusal) goes on in [`recover_from`], boxed: failures are the rare path, and the one that
/// awaits (a backoff, a poison publish).
///
/// `kept`, when given, is a copy of `message` that outlives the run, used instead of a copy of
/// its own on a failure.
pub(crate) async fn run(
    segment: &Segment,
    inner: Inner<'_>,
    message: Message,
    kept: Option<&Message>,
) -> HandlerResult {
    let steps = &segment.steps[..];
    let attempt = inner.attempt;
    let entry = match kept {
        Some(kept) => Some(Cow::Borrowed(kept)),
        None => segment.keeps_message.then(|| Cow::Owned(message.clone())),
    };
    // The clock is read on the way in only for a retry's elapsed-time limit; deadlines start when
    // the rest of the chain first waits (a message handled at once never reads it).
    let entered = segment.reads_clock.then(Instant::now);
    if let Some(&(level, max)) = segment.caps.iter().find(|(_, max)| attempt > *max) {
        let failure = Failure { entry, entered, outcome: Err(refusal(attempt, max)), level };
        return Box::pin(recover_from(steps, inner, failure)).await;
    }
    let correlation = segment.correlates.then(|| Correlation::of(&message));
    let deadline = segment.deadline.map(|(limit, step)| {
        let when = match entered {
            Some(entered) => When::At(entered + limit),
            None => When::AfterFirstWait(limit),
        };
        Deadline { when, step }
    });
    let guard = Guard { deadline, recover: segment.recover };
    let chain = inner.run(message, attempt);
    let mut guarded = Guarded::new(chain, steps, guard);
    let result = (&mut guarded).await;
    let entered = entered.or(guarded.waited);
    drop(guarded);
    let (outcome, level) = match result {
        Ok(Ok(mut outputs)) => {
            if let Some(correlation) = &correlation {
                correlation.stamp(&mut outputs);
            }
            return Ok(outputs);
        }
        Ok(Err(error)) => (Err(error), steps.len()),
        Err((error, level)) => (Err(error), level),
    };
    Box::pin(recover_from(steps, inner, Failure { entry, entered, outcome, level })).await
}

/// The error of a [`RedeliveryCap`](super::RedeliveryCap) step.
fn refusal(attempt: u32, max: u32) -> Error {
    Error::new(ErrorKind::Handler, format!("delivered {attempt} times, more than the cap of {max}"))
        .into_permanent()
}

/// How a first attempt failed.
struct Failure<'a> {
    /// The message as it reached the steps (when a step needs it after a failure).
    entry: Option<Cow<'a, Message>>,
    /// When the deadlines started: the steps were entered (a step read the clock then), or the
    /// rest of the chain first waited; `None`: now.
    entered: Option<Instant>,
    /// The failure.
    outcome: HandlerResult,
    /// How many steps (the outermost ones) see it.
    level: usize,
}

/// The failure path of [`run`]: the steps that see the failure act on it, innermost first; a
/// retry enters the steps inside it again and runs the rest of the chain again.
async fn recover_from(steps: &[Step], inner: Inner<'_>, failure: Failure<'_>) -> HandlerResult {
    let Failure { entry, entered, mut outcome, level } = failure;
    let base = entered.unwrap_or_else(Instant::now);
    let entry = entry.as_deref();
    let mut attempt = inner.attempt;
    let correlation = entry.map(Correlation::of);
    // The state the way in left in the steps that see the failure.
    let mut frames: Frames = steps[..level]
        .iter()
        .map(|step| {
            let since = |limit: Duration| base + limit;
            let mut frame = Frame::new(attempt);
            match step {
                Step::Retry(retry) => {
                    frame.started = retry.max_elapsed_limit().map(|_| since(Duration::ZERO));
                    frame.deadline = retry.attempt_limit().map(since);
                }
                Step::Timeout(limit) => frame.deadline = Some(since(*limit)),
                _ => {}
            }
            frame
        })
        .collect();

    loop {
        // Leave the steps, innermost first, each acting on the outcome.
        'leave: loop {
            let Some(mut frame) = frames.pop() else { return outcome };
            let level = frames.len();
            match &steps[level] {
                Step::Correlation => {
                    if let (Ok(outputs), Some(correlation)) = (&mut outcome, &correlation) {
                        correlation.stamp(outputs);
                    }
                }
                Step::Poison(poison) => {
                    let Err(error) = &outcome else { continue 'leave };
                    if !poison.should_poison(error, frame.attempt) {
                        continue 'leave;
                    }
                    let original = entry.cloned().expect("a copy is kept for the poison step");
                    let publish =
                        poison.publish(inner.to_next(frame.attempt), original, error, frame.attempt);
                    let guard = Guard::of(steps, &frames, level);
                    outcome = match Guarded::new(publish, steps, guard).await {
                        Ok(Ok(outputs)) => Ok(outputs),
                        Ok(Err(publish_error)) => Err(publish_error),
                        Err((error, outer)) => {
                            frames.truncate(outer);
                            Err(error)
                        }
                    };
                }
                Step::Retry(retry) => {
                    let Err(error) = &outcome else { continue 'leave };
                    let Some(delay) = retry.next_delay(error, frame.retries, frame.started) else {
                        continue 'leave;
                    };
                    frame.retries += 1;
                    if let Some(hook) = retry.hook() {
                        hook(&RetryEvent {
                            retry: frame.retries,
                            error,
                            delay,
                            handler: inner.handler_name(),
                        });
                    }
                    tracing::debug!(
                        handler = %inner.handler_name(),
                        retry = frame.retries,
                        ?delay,
                        %error,
                        "retrying",
                    );
                    let sleep = Box::pin(tokio::time::sleep(delay));
                    let guard = Guard::of(steps, &frames, level);
                    if let Err((error, outer)) = Guarded::new(sleep, steps, guard).await {
                        frames.truncate(outer);
                        outcome = Err(error);
                        continue 'leave;
                    }
                    // Enter the steps inside the retry again.
                    attempt = frame.attempt.saturating_add(frame.retries);
                    if let Some(limit) = retry.attempt_limit() {
                        frame.deadline = Some(Instant::now() + limit);
                    }
                    frames.push(frame);
                    break 'leave;
                }
                Step::Ignore(ignore) => {
                    if matches!(&outcome, Err(error) if ignore.ignores(error)) {
                        if let Err(error) = &outcome {
                            tracing::debug!(%error, "error ignored");
                        }
                        outcome = Ok(Outputs::new());
                    }
                }
                Step::DelayOnNack(delay) => {
                    outcome = outcome.map_err(|error| match error.retry_after_hint() {
                        Some(_) => error,
                        None => error.retry_after(delay.delay(frame.attempt)),
                    });
                }
                Step::Timeout(_) | Step::Recover | Step::Cap(_) | Step::Pass => {}
            }
        }

        // Enter the steps inside the retry, outermost first, then run the rest of the chain.
        let mut refused = None;
        let mut now = None;
        while frames.len() < steps.len() {
            let level = frames.len();
            let mut frame = Frame::new(attempt);
            match &steps[level] {
                Step::Retry(retry) => {
                    frame.started = retry.max_elapsed_limit().map(|_| clock(&mut now));
                    frame.deadline = retry.attempt_limit().map(|limit| clock(&mut now) + limit);
                }
                Step::Timeout(limit) => frame.deadline = Some(clock(&mut now) + *limit),
                Step::Cap(max) if attempt > *max => {
                    refused = Some(Err(refusal(attempt, *max)));
                    break;
                }
                _ => {}
            }
            frames.push(frame);
        }
        outcome = match refused {
            Some(refused) => refused,
            None => {
                let message = entry.cloned().expect("a copy is kept for the retry step");
                let chain = inner.run(message, attempt);
                let guard = Guard::of(steps, &frames, frames.len());
                match Guarded::new(chain, steps, guard).await {
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

/// A deadline of a step, and what its expiry means.
#[derive(Clone, Copy)]
struct Deadline {
    when: When,
    /// The step it belongs to: a timeout (whose outer steps see the error) or a retry (which
    /// sees it itself).
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
    fn expired(&self, steps: &[Step]) -> (Error, usize) {
        let (text, level) = match &steps[self.step] {
            Step::Retry(retry) => {
                let limit = retry.attempt_limit().unwrap_or_default();
                (format!("attempt took longer than {limit:?}"), self.step + 1)
            }
            Step::Timeout(limit) => (format!("handler took longer than {limit:?}"), self.step),
            _ => unreachable!("only timeouts and retries have deadlines"),
        };
        (Error::new(ErrorKind::Timeout, text), level)
    }
}

/// What guards a future awaited inside some steps: their earliest deadline and their innermost
/// panic guard.
#[derive(Clone, Copy, Default)]
struct Guard {
    deadline: Option<Deadline>,
    /// The innermost recoverer: the number of steps that see a caught panic.
    recover: Option<usize>,
}

impl Guard {
    /// Adds the deadline of step `step`. The earliest wins; of two at the same instant, the inner
    /// one (it fires first when the layers are nested).
    fn offer(&mut self, when: Instant, step: usize) {
        if self.deadline.is_none_or(|d| matches!(d.when, When::At(earliest) if when <= earliest)) {
            self.deadline = Some(Deadline { when: When::At(when), step });
        }
    }

    /// The guard of the first `depth` steps, from their frames.
    fn of(steps: &[Step], frames: &[Frame], depth: usize) -> Self {
        let mut guard = Guard::default();
        for (level, (step, frame)) in steps.iter().zip(frames).take(depth).enumerate() {
            match (step, frame.deadline) {
                (Step::Timeout(_) | Step::Retry(_), Some(when)) => guard.offer(when, level),
                (Step::Recover, _) => guard.recover = Some(level),
                _ => {}
            }
        }
        guard
    }
}

/// A future awaited under a [`Guard`]. Fails with the error and the number of steps that see it
/// when the deadline passes or a panic is caught.
struct Guarded<'s, F> {
    future: F,
    steps: &'s [Step],
    guard: Guard,
    /// Created at the first `Pending`: a handler that finishes at once never touches the timer.
    sleep: Option<Pin<Box<Sleep>>>,
    /// When the future first waited, if a deadline started counting then.
    waited: Option<Instant>,
}

impl<'s, F> Guarded<'s, F> {
    fn new(future: F, steps: &'s [Step], guard: Guard) -> Self {
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
                Err(panic) => {
                    let text = crate::error::panic_text(&*panic);
                    return Poll::Ready(Err((Error::new(ErrorKind::Panic, text), level)));
                }
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

/// The [`Middleware::call`](super::Middleware::call) of a built-in layer: its one step around `next`.
pub(crate) fn call_single(
    step: Step,
    message: Message,
    next: Next,
) -> futures_core::future::BoxFuture<'static, HandlerResult> {
    let segment = Segment::new(vec![step]);
    Box::pin(async move {
        let inner = Inner { chain: &next.chain, index: next.index, attempt: next.attempt };
        run(&segment, inner, message, None).await
    })
}
