//! One delivery's way through a handler: run the chain, publish the outputs, settle.

use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use futures_core::Stream;
use futures_util::FutureExt;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::Instrument;

use super::config::RouterConfig;
use crate::context::RouteInfo;
use crate::error::{Error, Result};
use crate::handler::{HandlerResult, Outputs};
use crate::keys::{requeue, retry, CORRELATION_ID};
use crate::message::{Message, MessageId};
use crate::middleware::poisoned;
use crate::middleware::{CallSlot, Chain};
use crate::observe::RouteMetrics;
use crate::pubsub::{Acker, Delivery, Publisher, Subscriber, Subscription};

/// The router's intake switch: a cancellation token to wait on, and a flag that every delivery
/// reads. Checking a `CancellationToken` locks a mutex; the flag is one load.
#[derive(Clone, Default)]
pub(crate) struct Intake {
    token: CancellationToken,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl Intake {
    /// Stops intake: the flag first, then the token (whose waiters then find it set).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, std::sync::atomic::Ordering::Release);
        self.token.cancel();
    }

    /// Whether intake stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once intake stops.
    pub(crate) fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// The token (a worker waits on a child of its own: waiting registers under the node's lock).
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// A handler ready to run.
pub(crate) struct Prepared {
    pub(crate) group: String,
    pub(crate) concurrency: usize,
    pub(crate) subscriber: Arc<dyn Subscriber>,
    pub(crate) publisher: Arc<dyn Publisher>,
    pub(crate) chain: Arc<Chain>,
    pub(crate) info: Arc<RouteInfo>,
    pub(crate) config: RouterConfig,
    pub(crate) intake: Intake,
    pub(crate) metrics: RouteMetrics,
    /// Deliveries with the same key stay in order on one lane (`concurrency > 1`).
    pub(crate) order_by_key: bool,
    /// An `InstantAck` layer is in the chain: ack before handling.
    pub(crate) instant_ack: bool,
    /// Whether the subscription is up (readiness).
    pub(crate) up: Arc<std::sync::atomic::AtomicBool>,
    /// Failures to be redelivered after at least this long are requeued through the publisher's
    /// delay store ([`RouterConfig::requeue_after`], where the publisher delays).
    pub(crate) requeue_after: Option<std::time::Duration>,
    /// This worker's stage of a handler with retry topics or a dead letter topic.
    pub(crate) retry: Option<Arc<super::retry::RetryStage>>,
    /// The handler runs in a unit of work ([`Tx`](crate::inbox::Tx)): its outputs are written
    /// and committed in the unit, not published.
    pub(crate) transactional: bool,
    /// A batch handler's batches ([`Route::batch`](super::Route::batch)).
    pub(crate) batch: Option<super::route::BatchSpec>,
}

/// The next delivery, or `None` once intake stops or the subscription ends.
///
/// Intake is checked before every delivery (a flag), so it stops at once however busy the
/// subscription is; the cancellation future (a child of the intake's token; polling it registers
/// a waker, under a lock) is only polled when no delivery is ready. A `select!` would create,
/// register and drop one per message.
pub(super) fn next_delivery(
    intake: &Intake,
    sub: &mut Subscription,
    cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Delivery>>> {
    if intake.is_stopped() {
        return Poll::Ready(None);
    }
    match Pin::new(sub).poll_next(cx) {
        Poll::Ready(next) => Poll::Ready(next),
        Poll::Pending => cancelled.poll(cx).map(|()| None),
    }
}

/// What is left of a delivery after [`handle`].
pub(super) enum Left<'a, F> {
    /// Nothing: handled and settled.
    Done,
    /// The rest of its handling, boxed.
    Rest(BoxFuture<'a, ()>),
    /// Its whole handling, as one future ([`process`]'s).
    Whole(F),
}

/// What is left of a delivery being handled, as one future to poll (see [`Left::into_handling`]).
pub(super) type Handling<'a, F> = futures_util::future::Either<BoxFuture<'a, ()>, F>;

impl<'a, F> Left<'a, F> {
    /// The future to poll until the delivery is done, or `None` when it is.
    pub(super) fn into_handling(self) -> Option<Handling<'a, F>> {
        match self {
            Left::Done => None,
            Left::Rest(rest) => Some(Handling::Left(rest)),
            Left::Whole(whole) => Some(Handling::Right(whole)),
        }
    }
}

/// Handles one delivery (chain, outputs, settle) as far as it goes without waiting, polling
/// with `cx`, and returns what is left.
///
/// Most deliveries end here: with a handler that does not wait and a backend that settles at
/// once (the in-memory one), the handler's future is built in the caller's [`CallSlot`], polled
/// once, finishes, and the ack is sent, all in this function, with no allocation and no future
/// of the router's own. A handler that waits (for a database, say) leaves its started call to
/// a boxed continuation ([`finish`]): the call is already on the heap, so it moves there as a
/// pointer (and the caller gets a new slot). A future of the router's own built for every
/// message instead (as [`process`] is) is several hundred bytes that rustc builds and copies two
/// or three times per message, whether the handler waits or not.
///
/// A handler in a unit of work, an instant ack and a request (its outputs are replies) run in
/// [`process`]'s future. A retry topic's wait, a copy the router requeued and a span somebody
/// records are rare: boxed.
pub(super) fn handle<'a>(
    p: &'a Prepared,
    delivery: Delivery,
    cx: &mut Context<'_>,
    slot: &mut Option<Box<dyn CallSlot<'a> + 'a>>,
) -> Left<'a, impl Future<Output = ()> + Send + 'a> {
    let (message, attempt, acker) = delivery.into_parts();
    p.metrics.received();
    if p.retry.as_ref().is_some_and(|stage| stage.waits) || message.metadata().get(requeue::ID).is_some() {
        return Left::Rest(Box::pin(handle_rare(p, message, attempt, acker)));
    }
    let span = handle_span(p, &message, attempt);
    // Without a subscriber interested in the span, skip the `Instrumented` wrapper: it would
    // only enter and leave a disabled span on every poll.
    if !span.is_disabled() {
        return Left::Rest(Box::pin(process(p, message, attempt, acker).instrument(span)));
    }
    if p.transactional || p.instant_ack || crate::reply::reply_topic(&message).is_some() {
        return Left::Whole(process(p, message, attempt, acker));
    }
    let id = message.id();
    // The message is kept for the poison topic. A backend that redelivers (the in-memory one)
    // keeps a copy in the acker already: that one is used rather than another clone.
    let original = if acker.message().is_some() { None } else { Some(message.clone()) };
    let started = p.metrics.timed().then(std::time::Instant::now);
    // A bare chain calls its handler in the caller's slot, where it has one (made again after a
    // call that waited took the last one along).
    if slot.is_none() {
        *slot = p.chain.call_slot();
    }
    let outcome = match slot.take() {
        Some(mut call) => {
            match std::panic::catch_unwind(AssertUnwindSafe(|| call.start(message, attempt, cx))) {
                Ok(Poll::Pending) => {
                    let rest = Handled { id, original, attempt, acker, reply_to: None };
                    let resumed = std::future::poll_fn(move |cx| call.resume(cx));
                    return Left::Rest(Box::pin(finish(p, resumed, started, rest)));
                }
                Ok(Poll::Ready(result)) => {
                    *slot = Some(call);
                    Ok(result)
                }
                // (The slot goes with the panicked call in it.)
                Err(panic) => Err(panic),
            }
        }
        None => {
            let mut call = if p.chain.starts_fused() {
                // The fused run reads the message as it came (for a poison topic, say) until it
                // ends: it gets a copy of its own (reference counts), since `original` moves
                // into the continuation if the call waits.
                let kept = match &original {
                    Some(original) => original.clone(),
                    None => acker.message().cloned().expect("the acker keeps the message"),
                };
                p.chain.call_fused_owned(message, kept, attempt)
            } else {
                p.chain.call(message, attempt)
            };
            let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(cx))) {
                Ok(Poll::Pending) => {
                    let rest = Handled { id, original, attempt, acker, reply_to: None };
                    return Left::Rest(Box::pin(finish(p, call, started, rest)));
                }
                Ok(Poll::Ready(result)) => Ok(result),
                Err(panic) => Err(panic),
            };
            drop(call);
            outcome
        }
    };
    if let Some(started) = started {
        p.metrics.handler_duration(started.elapsed().as_secs_f64());
    }
    match outcome {
        Ok(Ok(outputs)) if outputs.is_empty() => {
            drop(original);
            settle_now(p, acker.ack(), true, cx)
        }
        outcome => {
            let rest = Handled { id, original, attempt, acker, reply_to: None };
            Left::Rest(Box::pin(conclude(p, outcome, rest)))
        }
    }
}

/// A delivery whose handler was called: what [`conclude`] needs besides the outcome.
struct Handled {
    id: MessageId,
    /// The copy kept for the poison topic (`None` where the acker keeps one).
    original: Option<Message>,
    attempt: u32,
    acker: Acker,
    /// A request's reply topic, and its id: the outputs are its replies.
    reply_to: Option<(Box<str>, MessageId)>,
}

impl Handled {
    /// The message as it came, for the poison topic.
    fn original(&mut self) -> Message {
        match self.original.take() {
            Some(original) => original,
            None => self.acker.message().cloned().expect("the acker keeps the message"),
        }
    }
}

/// What the handler's outcome calls for: its outputs published and the delivery acked, or the
/// failure handled ([`fail`], [`panicked`]).
type Outcome = std::thread::Result<HandlerResult>;

/// The rest of [`handle`] for a handler call that waited (its boxed future, or its
/// [`CallSlot`] resumed): awaits it (the call is dropped once it ends), then [`conclude`]s.
async fn finish(
    p: &Prepared,
    call: impl Future<Output = HandlerResult>,
    started: Option<std::time::Instant>,
    rest: Handled,
) {
    let outcome = AssertUnwindSafe(call).catch_unwind().await;
    if let Some(started) = started {
        p.metrics.handler_duration(started.elapsed().as_secs_f64());
    }
    conclude(p, outcome, rest).await;
}

/// Settles with `op` if the backend settles at once; otherwise leaves the wait, boxed.
fn settle_now<'a, F>(
    p: &'a Prepared,
    mut op: crate::pubsub::OpFuture<'static>,
    ack: bool,
    cx: &mut Context<'_>,
) -> Left<'a, F> {
    match Pin::new(&mut op).poll(cx) {
        Poll::Ready(result) => {
            p.metrics.settled(ack);
            if let Err(error) = result {
                settle_failed(p, ack, &error);
            }
            Left::Done
        }
        Poll::Pending => Left::Rest(Box::pin(settle(op, p, ack))),
    }
}

/// [`handle`] for a copy the router requeued, or on a retry topic (which waits until the message
/// is due).
#[cold]
async fn handle_rare(p: &Prepared, mut message: Message, mut attempt: u32, acker: Acker) {
    if message.metadata().get(requeue::ID).is_some() {
        match requeued(p, &mut message, attempt) {
            Some(true_attempt) => attempt = true_attempt,
            None => return settle(acker.ack(), p, true).await,
        }
    }
    if p.retry.as_ref().is_some_and(|stage| stage.waits) && !wait_for_due(p, &mut message).await {
        // Shutting down: give it back uncounted, for the next process.
        return settle(acker.release(), p, false).await;
    }
    let span = handle_span(p, &message, attempt);
    if span.is_disabled() {
        return process(p, message, attempt, acker).await;
    }
    process(p, message, attempt, acker).instrument(span).await;
}

/// The span a message is handled in (disabled, and cheap, unless a subscriber records it).
fn handle_span(p: &Prepared, message: &Message, attempt: u32) -> tracing::Span {
    tracing::debug_span!(
        "millstream.handle",
        handler = %p.info.name,
        topic = %p.info.topic,
        message_id = %message.id(),
        correlation_id = %EffectiveCorrelation(message),
        attempt,
        trace_id = tracing::field::Empty,
    )
}

/// On a retry topic: takes the message's due time and reason out of its metadata and waits until
/// it is due; `false` if intake stopped first.
async fn wait_for_due(p: &Prepared, message: &mut Message) -> bool {
    let metadata = message.metadata_mut();
    let due = metadata.get(retry::DUE).and_then(|due| due.parse::<u64>().ok()).unwrap_or(0);
    metadata.remove(retry::DUE);
    metadata.remove(retry::REASON);
    let now = crate::delay::now_ms();
    if due <= now {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(std::time::Duration::from_millis(due - now)) => true,
        () = p.intake.cancelled() => false,
    }
}

/// A copy the router requeued ([`requeue`]): for this handler's group, the attempt it is (the
/// attempts before the requeue plus the broker's count), with the requeue's keys removed; for
/// another group, `None` (that group's handler takes it; this one acks it unhandled).
#[cold]
pub(super) fn requeued(p: &Prepared, message: &mut Message, attempt: u32) -> Option<u32> {
    if message.metadata().get(requeue::GROUP).is_some_and(|group| group != p.group.as_str()) {
        tracing::trace!(handler = %p.info.name, "a copy requeued for another group; acking it");
        return None;
    }
    Some(restore_requeued(message).saturating_add(attempt))
}

/// Turns a requeued copy back into the message it copies: its original id, without the
/// requeue's keys. Returns the attempts made before the requeue.
fn restore_requeued(message: &mut Message) -> u32 {
    let metadata = message.metadata_mut();
    let before: u32 = metadata.get(requeue::ATTEMPTS).and_then(|n| n.parse().ok()).unwrap_or(0);
    let id = metadata.get(requeue::ID).and_then(|id| MessageId::parse(id).ok());
    metadata.remove(requeue::GROUP);
    metadata.remove(requeue::ATTEMPTS);
    metadata.remove(requeue::ID);
    if let Some(id) = id {
        message.set_id(id);
    }
    before
}

/// Shows a message's correlation id: its `correlation_id` metadata, else its own id (a message
/// without one is the root of its flow). Formatted only when the span is recorded.
struct EffectiveCorrelation<'a>(&'a Message);

impl std::fmt::Display for EffectiveCorrelation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.metadata().get(CORRELATION_ID) {
            Some(id) => f.write_str(id),
            None => std::fmt::Display::fmt(&self.0.id(), f),
        }
    }
}

/// [`handle`]'s way as one future: every kind of handler, middleware and delivery (see there for
/// which take it).
#[allow(clippy::manual_async_fn)] // (an `async move` block on purpose: see `conclude`)
fn process(
    p: &Prepared,
    message: Message,
    attempt: u32,
    mut acker: Acker,
) -> impl Future<Output = ()> + Send + '_ {
    async move {
        if p.instant_ack {
            let instant = std::mem::replace(&mut acker, Acker::noop());
            if let Err(error) = instant.ack().await {
                tracing::warn!(handler = %p.info.name, %error, "instant ack failed");
            }
        }
        // A request's outputs are its replies (to the topic it names, as replies to its id).
        let reply_to = crate::reply::reply_topic(&message).map(|to| (to, message.id()));
        let id = message.id();
        // The message is kept for the poison topic. A backend that redelivers (the in-memory one)
        // keeps a copy in the acker already: that one is used rather than another clone.
        let original = if acker.message().is_some() { None } else { Some(message.clone()) };
        if p.transactional {
            let done = Box::pin(transactional(p, message, original, attempt, acker, reply_to));
            return done.await;
        }
        let started = p.metrics.timed().then(std::time::Instant::now);
        let outcome = {
            let call = call_chain(p, message, original.as_ref(), &acker, attempt);
            AssertUnwindSafe(call).catch_unwind().await
        };
        if let Some(started) = started {
            p.metrics.handler_duration(started.elapsed().as_secs_f64());
        }
        conclude(p, outcome, Handled { id, original, attempt, acker, reply_to }).await;
    }
}

/// After the handler: publishes its outputs (a request's as replies) and acks, or hands a
/// failure to [`fail`] or [`panicked`].
///
/// (This and [`process`] return `async move` blocks rather than being `async fn`s: an
/// `async fn` moves each argument into a local of its own as it starts, and rustc keeps room
/// for both copies in every state of the future, a few hundred bytes built and copied per
/// message.)
#[allow(clippy::manual_async_fn)] // (on purpose: see above)
fn conclude(p: &Prepared, outcome: Outcome, mut rest: Handled) -> impl Future<Output = ()> + Send + '_ {
    async move {
        let outputs = match outcome {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(error)) => {
                let original = rest.original();
                let to = rest.reply_to.map(|(to, _)| to);
                // Boxed, as the other rare paths here: their futures are large, and `process` holds
                // this one.
                let failed = Box::pin(fail(p, original, rest.attempt, rest.acker, error, to));
                return failed.await;
            }
            Err(panic) => {
                let failed = Box::pin(panicked(p, rest.id, rest.attempt, rest.acker, panic));
                return failed.await;
            }
        };
        let published = if let Some((to, request)) = rest.reply_to.take() {
            let replied = Box::pin(publish_replies(p, to, request, outputs));
            replied.await
        } else if outputs.is_empty() {
            Ok(())
        } else {
            let started = p.metrics.timed().then(std::time::Instant::now);
            let published = if outputs.len() == 1 {
                let output = outputs.into_iter().next().expect("one output");
                match p.info.output_topic(output.topic) {
                    Ok(topic) => p.publisher.publish(&topic, output.message).await,
                    Err(error) => Err(error),
                }
            } else {
                let several = Box::pin(publish_outputs(p, outputs));
                several.await
            };
            if let Some(started) = started {
                p.metrics.publish_duration(started.elapsed().as_secs_f64());
            }
            published
        };
        match published {
            Ok(()) => settle(rest.acker.ack(), p, true).await,
            // An output the backend can never take (too large, say): retrying cannot help, so the
            // input goes the way of a permanent handler error.
            Err(error) if error.is_permanent() => {
                let original = rest.original();
                let error = error.context("publishing the handler's output failed");
                let failed = Box::pin(fail(p, original, rest.attempt, rest.acker, error, None));
                failed.await;
            }
            Err(error) => {
                drop(rest.original);
                tracing::warn!(handler = %p.info.name, %error, "publishing outputs failed; nacking");
                settle(rest.acker.nack_after(nack_delay(p, &error)), p, false).await;
            }
        }
    }
}

/// The handler's chain called with `message`: a chain that starts with fused layers borrows the
/// copy of the message kept for the poison topic (`original`, or the acker's).
#[inline]
fn call_chain<'a>(
    p: &'a Prepared,
    message: Message,
    original: Option<&'a Message>,
    acker: &'a Acker,
    attempt: u32,
) -> futures_core::future::BoxFuture<'a, crate::handler::HandlerResult> {
    if p.chain.starts_fused() {
        let kept = match (original, acker.message()) {
            (Some(original), _) | (None, Some(original)) => original,
            (None, None) => unreachable!("a copy is kept when the acker keeps none"),
        };
        p.chain.call_fused(message, kept, attempt)
    } else {
        p.chain.call(message, attempt)
    }
}

/// [`process`] for a handler that runs in a unit of work: the chain runs with a slot where the
/// endpoint leaves the unit it began; once the chain succeeds, the outputs are written and the
/// unit committed (the delivery is acked only after the commit). A commit that fails nacks the
/// delivery: whether it committed is found out when it comes again (the unit then says it was
/// handled). A chain that succeeds without leaving a unit (the message was handled before) acks.
#[cold]
async fn transactional(
    p: &Prepared,
    message: Message,
    original: Option<Message>,
    attempt: u32,
    acker: Acker,
    reply_to: Option<(Box<str>, MessageId)>,
) {
    let slot = crate::unit::PendingSlot::default();
    let id = message.id();
    let started = p.metrics.timed().then(std::time::Instant::now);
    let result = {
        let call = call_chain(p, message, original.as_ref(), &acker, attempt);
        AssertUnwindSafe(crate::unit::with_pending(slot.clone(), call)).catch_unwind().await
    };
    if let Some(started) = started {
        p.metrics.handler_duration(started.elapsed().as_secs_f64());
    }
    let left = std::mem::take(&mut *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let original = || match &original {
        Some(original) => original.clone(),
        None => acker.message().cloned().expect("the acker keeps the message"),
    };
    let outputs = match result {
        Ok(Ok(outputs)) => outputs,
        Ok(Err(error)) => {
            drop(left);
            let message = original();
            return fail(p, message, attempt, acker, error, reply_to.map(|(to, _)| to)).await;
        }
        Err(panic) => {
            drop(left);
            return panicked(p, id, attempt, acker, panic).await;
        }
    };
    let (unit, work) = match left {
        crate::unit::Left::Pending(pending) => pending,
        // Handled before: the handler did not run, its outputs (and a request's replies) went out
        // then. A request whose reply was lost with the crash is not answered again.
        crate::unit::Left::HandledBefore => return settle(acker.ack(), p, true).await,
        // A middleware answered without the handler: what it returned goes out as for any
        // handler, through the route's publisher (not the outbox).
        crate::unit::Left::Nothing => {
            let published = match reply_to {
                Some((to, request)) => publish_replies(p, to, request, outputs).await,
                None if outputs.is_empty() => Ok(()),
                None => publish_outputs(p, outputs).await,
            };
            return match published {
                Ok(()) => settle(acker.ack(), p, true).await,
                Err(error) if error.is_permanent() => {
                    let error = error.context("publishing the handler's output failed");
                    fail(p, original(), attempt, acker, error, None).await
                }
                Err(error) => settle(acker.nack_after(nack_delay(p, &error)), p, false).await,
            };
        }
    };
    // A request's replies go back on the backend the requester waits on, after the commit (once:
    // a redelivery after the commit is acked unanswered); every other output is written in the
    // unit.
    let (written, replies) = match reply_to {
        Some(reply) => (Vec::new(), Some((reply, outputs))),
        None => {
            let mut written = Vec::with_capacity(outputs.len());
            for output in outputs {
                match p.info.output_topic(output.topic) {
                    Ok(topic) => written.push((Cow::Owned(topic.into_owned()), output.message)),
                    Err(error) => return fail(p, original(), attempt, acker, error, None).await,
                }
            }
            (written, None)
        }
    };
    match unit.commit(work, written).await {
        Ok(()) => {}
        Err(error) if error.is_permanent() => {
            let error = error.context("committing the handler's transaction failed");
            let to = replies.map(|((to, _), _)| to);
            return fail(p, original(), attempt, acker, error, to).await;
        }
        Err(error) => {
            tracing::warn!(handler = %p.info.name, %error, "committing the handler's transaction failed; nacking (a redelivery finds out whether it committed)");
            return settle(acker.nack_after(nack_delay(p, &error)), p, false).await;
        }
    }
    if let Some(((to, request), outputs)) = replies {
        if let Err(error) = publish_replies(p, to, request, outputs).await {
            // Committed: a redelivery would be acked unhandled, so the reply is not retried.
            tracing::warn!(handler = %p.info.name, %error, "the reply of a committed request could not be sent");
        }
    }
    settle(acker.ack(), p, true).await
}

async fn panicked(p: &Prepared, id: MessageId, attempt: u32, acker: Acker, panic: Box<dyn Any + Send>) {
    let text = crate::error::panic_text(&*panic);
    tracing::error!(
        handler = %p.info.name,
        topic = %p.info.topic,
        message_id = %id,
        attempt,
        panic = %text,
        "handler panicked; nacking",
    );
    settle(acker.nack_after(p.config.nack_delay), p, false).await;
}

/// The redelivery delay for a failure: the error's own hint, else the router's default.
pub(super) fn nack_delay(p: &Prepared, error: &Error) -> Option<std::time::Duration> {
    error.retry_after_hint().or(p.config.nack_delay)
}

/// Settles a delivery whose handling failed: a transient error nacks (redelivered, with the
/// error's or the router's delay); a permanent one goes to the poison topic and is acked, or is
/// rejected when there is no poison topic (a nack would bring back what can never succeed).
///
/// A request that fails for good gets an error reply first (best effort: the requester times out
/// otherwise); a transient failure sends none, since the request comes again.
pub(super) async fn fail(
    p: &Prepared,
    original: Message,
    attempt: u32,
    acker: Acker,
    error: Error,
    reply_to: Option<Box<str>>,
) {
    let attempt = error.counted_attempt().unwrap_or(attempt);
    // (A backend that keeps the received message for its acker kept a requeued copy as it came.)
    let mut original = original;
    if original.metadata().get(requeue::ID).is_some() {
        restore_requeued(&mut original);
    }
    let retries_spent = p.retry.as_ref().is_some_and(|stage| stage.waits && stage.next.is_none());
    if let (Some(to), true) = (reply_to, error.is_permanent() || retries_spent) {
        let reply = crate::reply::error_reply(original.id(), &error);
        if let Err(reply_error) = p.publisher.publish(&to, reply).await {
            tracing::warn!(handler = %p.info.name, error = %reply_error, "sending the error reply failed");
        }
    }
    // A handler with retry topics: a transient failure goes to the next one.
    if let (Some(stage), false) = (&p.retry, error.is_permanent()) {
        if let Some((next, delay)) = &stage.next {
            return retry_later(p, original, attempt, acker, &error, next, *delay).await;
        }
    }
    let dead_letter = p.retry.as_ref().and_then(|stage| stage.dead_letter.as_deref());
    // (`retries_spent`: the last retry topic's failures; a handler with only a dead letter nacks
    // transient ones.)
    let poison =
        dead_letter.or(p.config.poison_topic.as_deref()).filter(|_| error.is_permanent() || retries_spent);
    let what = match (error.is_permanent() || retries_spent, poison) {
        (false, _) => "handler failed; nacking",
        (true, Some(_)) => "permanent failure or retries spent; sending to the poison topic",
        (true, None) => "permanent failure and no poison topic; rejecting",
    };
    let id = original.id();
    let topic = p.retry.as_ref().map_or(&p.info.topic, |stage| &stage.topic);
    let (handler, kind) = (&p.info.name, error.kind());
    if error.is_permanent() || retries_spent {
        tracing::error!(%handler, %topic, message_id = %id, attempt, ?kind, %error, poison_topic = ?poison, "{what}");
    } else {
        tracing::warn!(%handler, %topic, message_id = %id, attempt, ?kind, %error, "{what}");
    }
    if !error.is_permanent() && !retries_spent {
        let delay = nack_delay(p, &error);
        return match (p.requeue_after, delay) {
            (Some(threshold), Some(delay)) if delay >= threshold => {
                requeue(p, original, attempt, acker, delay).await
            }
            _ => settle(acker.nack_after(delay), p, false).await,
        };
    }
    match poison {
        None => settle(acker.reject(error.to_string()), p, false).await,
        Some(poison) => {
            let dead = poisoned(original, &error, handler, topic, attempt);
            match p.publisher.publish(poison, dead).await {
                Ok(()) => {
                    p.metrics.poisoned();
                    settle(acker.ack(), p, true).await;
                }
                // Refused for good (too large for the target, say): nacking would only loop.
                Err(publish_error) if publish_error.is_permanent() => {
                    tracing::error!(%handler, error = %publish_error, "the poison topic refused the message for good; rejecting");
                    settle(acker.reject(error.to_string()), p, false).await;
                }
                Err(publish_error) => {
                    tracing::error!(%handler, error = %publish_error, "poison publish failed; nacking");
                    settle(acker.nack_after(p.config.nack_delay), p, false).await;
                }
            }
        }
    }
}

/// Passes a failed message to the next retry topic: a copy under a new id (a broker's duplicate
/// detection would drop the original's), with the original id, the attempts so far, when it is
/// due and why it failed; then acks the delivery. If the copy cannot be published, the delivery
/// is nacked.
async fn retry_later(
    p: &Prepared,
    original: Message,
    attempt: u32,
    acker: Acker,
    error: &Error,
    next: &str,
    delay: std::time::Duration,
) {
    let id = original.id();
    // (+1: `now_ms` truncates, and the wait must not end up to a millisecond early.)
    let due = crate::delay::now_ms()
        .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
        .saturating_add(1);
    let mut copy = original
        .with_id(MessageId::new())
        .with_static_header(requeue::ID, id.to_string())
        .with_static_header(requeue::GROUP, p.group.as_str())
        .with_static_header(requeue::ATTEMPTS, attempt.to_string())
        .with_static_header(retry::DUE, due.to_string())
        .with_static_header(retry::REASON, error.to_string());
    // Through the delay store where there is one: it arrives when due, and the retry topic's
    // handler does not hold it on the broker meanwhile.
    if p.publisher.delays() {
        copy = copy.deliver_after(delay);
    }
    match p.publisher.publish(next, copy).await {
        Ok(()) => {
            tracing::debug!(handler = %p.info.name, attempt, retry_topic = next, "sent to the retry topic; acking the delivery");
            p.metrics.settled(false);
            if let Err(error) = acker.ack().await {
                p.metrics.settle_failed();
                tracing::warn!(handler = %p.info.name, %error, "ack after a retry failed; the message may come twice");
            }
        }
        Err(publish_error) => {
            tracing::warn!(handler = %p.info.name, error = %publish_error, "publishing to the retry topic failed; nacking");
            settle(acker.nack_after(nack_delay(p, error)), p, false).await;
        }
    }
}

/// Requeues a failed message instead of nacking it: a copy goes to the handler's topic through
/// the publisher's delay store, due after `delay`, marked for this handler's group with the
/// attempts made so far and the original's id (the copy has an id of its own, so that a broker's
/// duplicate detection keeps it), and the original is acked. If the copy cannot be stored, the original
/// is nacked as it would have been.
async fn requeue(p: &Prepared, original: Message, attempt: u32, acker: Acker, delay: std::time::Duration) {
    let id = original.id();
    let copy = original
        .with_id(MessageId::new())
        .with_static_header(requeue::ID, id.to_string())
        .with_static_header(requeue::GROUP, p.group.as_str())
        .with_static_header(requeue::ATTEMPTS, attempt.to_string())
        .deliver_after(delay);
    match p.publisher.publish(&p.info.topic, copy).await {
        Ok(()) => {
            tracing::debug!(handler = %p.info.name, attempt, ?delay, "requeued through the delay store; acking the delivery");
            p.metrics.settled(false);
            if let Err(error) = acker.ack().await {
                p.metrics.settle_failed();
                tracing::warn!(handler = %p.info.name, %error, "ack after a requeue failed; the message may come twice");
            }
        }
        Err(error) => {
            tracing::warn!(handler = %p.info.name, %error, "requeueing failed; nacking");
            settle(acker.nack_after(Some(delay)), p, false).await;
        }
    }
}

/// A request's outputs, each sent to its reply topic as a reply to `request`; an empty reply
/// when there is none (the handler returned nothing: the request is done).
async fn publish_replies(p: &Prepared, to: Box<str>, request: MessageId, outputs: Outputs) -> Result<()> {
    if outputs.is_empty() {
        return p.publisher.publish(&to, crate::reply::as_reply(request, Message::new(Vec::new()))).await;
    }
    for output in outputs {
        p.publisher.publish(&to, crate::reply::as_reply(request, output.message)).await?;
    }
    Ok(())
}

pub(super) async fn publish_outputs(p: &Prepared, outputs: Outputs) -> Result<()> {
    for output in outputs {
        let topic = p.info.output_topic(output.topic)?;
        p.publisher.publish(&topic, output.message).await?;
    }
    Ok(())
}

pub(super) async fn settle(op: crate::pubsub::OpFuture<'static>, p: &Prepared, ack: bool) {
    p.metrics.settled(ack);
    if let Err(error) = op.await {
        settle_failed(p, ack, &error);
    }
}

/// Counts and logs a settle the backend could not do.
fn settle_failed(p: &Prepared, ack: bool, error: &Error) {
    p.metrics.settle_failed();
    // The backend retried what it could: the message will come again (a duplicate, never a loss).
    let what = if ack { "ack failed; the message will be delivered again" } else { "settle failed" };
    tracing::warn!(handler = %p.info.name, %error, "{what}");
}
