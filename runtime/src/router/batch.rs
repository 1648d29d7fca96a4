//! A batch handler's intake ([`Route::batch`](super::Route::batch)): gathers deliveries into a
//! batch (up to its size, waiting at most its linger after the first), calls the handler with
//! the batch, publishes what it returned, then settles each delivery: the failed ones as a
//! failed single message would be (nacked, or sent to the poison topic), the rest acked.
//!
//! Deliveries are settled one by one, so a backend that settles cumulatively (Kafka) commits
//! through its watermark. A batch in progress when intake stops is finished, not dropped.

use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::task::Poll;

use futures_util::FutureExt;

use super::route::BatchSpec;
use super::worker::{fail, next_delivery, publish_outputs, requeued, settle, Prepared};
use crate::error::Error;
use crate::keys::requeue;
use crate::message::Message;
use crate::pubsub::{Acker, Delivery, Subscription};

pub(super) async fn consume(p: &Prepared, mut sub: Subscription, spec: BatchSpec) {
    let intake = p.intake.token().child_token();
    let mut cancelled = pin!(intake.cancelled());
    // A backend that hands out a group's next message only once the previous is settled has
    // nothing more to give while a batch waits: no linger there.
    let wait = !p.subscriber.features().strict_order && !spec.linger.is_zero();
    loop {
        let mut batch = Vec::with_capacity(spec.size.get().min(1024));
        match poll_fn(|cx| next_delivery(&p.intake, &mut sub, cancelled.as_mut(), cx)).await {
            Some(Ok(delivery)) => batch.push(delivery),
            Some(Err(error)) => {
                tracing::warn!(handler = %p.info.name, %error, "subscription error");
                continue;
            }
            None => return,
        }
        let deadline = tokio::time::Instant::now() + spec.linger;
        let mut ended = false;
        while batch.len() < spec.size.get() {
            let next = if wait {
                let next = poll_fn(|cx| next_delivery(&p.intake, &mut sub, cancelled.as_mut(), cx));
                match tokio::time::timeout_at(deadline, next).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            } else {
                // Only what is ready now.
                let ready = poll_fn(|cx| match next_delivery(&p.intake, &mut sub, cancelled.as_mut(), cx) {
                    Poll::Ready(next) => Poll::Ready(Some(next)),
                    Poll::Pending => Poll::Ready(None),
                });
                match ready.await {
                    Some(next) => next,
                    None => break,
                }
            };
            match next {
                Some(Ok(delivery)) => batch.push(delivery),
                Some(Err(error)) => tracing::warn!(handler = %p.info.name, %error, "subscription error"),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let handled = Box::pin(handle_batch(p, batch));
        handled.await;
        if ended {
            return;
        }
    }
}

/// One delivery of a batch, kept to be settled: a copy of the message for the poison topic
/// (unless the acker keeps one already, as the in-memory backend's does), its attempt and its
/// acker.
struct Held {
    original: Option<Message>,
    attempt: u32,
    acker: Acker,
}

impl Held {
    /// Settles a delivery that failed with `error`, as a single handler's failure is settled.
    async fn fail(self, p: &Prepared, error: Error) {
        let original = match self.original {
            Some(original) => original,
            None => self.acker.message().cloned().expect("the acker keeps the message"),
        };
        fail(p, original, self.attempt, self.acker, error, None).await
    }
}

async fn handle_batch(p: &Prepared, deliveries: Vec<Delivery>) {
    let mut messages = Vec::with_capacity(deliveries.len());
    let mut held = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let (mut message, mut attempt, acker) = delivery.into_parts();
        p.metrics.received();
        if message.metadata().get(requeue::ID).is_some() {
            match requeued(p, &mut message, attempt) {
                Some(true_attempt) => attempt = true_attempt,
                None => {
                    settle(acker.ack(), p, true).await;
                    continue;
                }
            }
        }
        let original = if acker.message().is_some() { None } else { Some(message.clone()) };
        held.push(Held { original, attempt, acker });
        messages.push(message);
    }
    if held.is_empty() {
        return;
    }
    let attempt = held.iter().map(|h| h.attempt).max().unwrap_or(1);
    let started = p.metrics.timed().then(std::time::Instant::now);
    let result = AssertUnwindSafe(p.chain.call_batch(messages, attempt)).catch_unwind().await;
    if let Some(started) = started {
        p.metrics.handler_duration(started.elapsed().as_secs_f64());
    }
    let outcome = match result {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => return fail_all(p, held, &error).await,
        Err(panic) => {
            let text = crate::error::panic_text(&*panic);
            tracing::error!(handler = %p.info.name, topic = %p.info.topic, messages = held.len(), panic = %text, "batch handler panicked; nacking the batch");
            let nacks = held.into_iter().map(|h| settle(h.acker.nack_after(p.config.nack_delay), p, false));
            futures_util::future::join_all(nacks).await;
            return;
        }
    };
    if !outcome.outputs.is_empty() {
        if let Err(error) = publish_outputs(p, outcome.outputs).await {
            let error = error.context("publishing the batch handler's output failed");
            tracing::warn!(handler = %p.info.name, %error, "publishing a batch's outputs failed");
            return fail_all(p, held, &error).await;
        }
    }
    let mut failures: Vec<Option<Error>> = held.iter().map(|_| None).collect();
    for (index, error) in outcome.failures {
        // (Indices come from the delivered batch: a requeued copy acked above is not in it.)
        if let Some(slot) = failures.get_mut(index) {
            slot.get_or_insert(error);
        }
    }
    let settles = held.into_iter().zip(failures).map(|(h, failure)| async move {
        match failure {
            Some(error) => h.fail(p, error).await,
            None => settle(h.acker.ack(), p, true).await,
        }
    });
    futures_util::future::join_all(settles).await;
}

/// Every message of the batch fails with `error`.
async fn fail_all(p: &Prepared, held: Vec<Held>, error: &Error) {
    let fails = held.into_iter().map(|h| h.fail(p, error.duplicate()));
    futures_util::future::join_all(fails).await;
}
