//! A handler's intake: subscribe (again, after the backend ends the stream), then take
//! deliveries one at a time ([`consume_serial`]) or feed them to lanes
//! ([`lanes::consume`](super::lanes::consume)), each handled by [`handle`].

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use super::worker::{handle, next_delivery, Prepared};
use crate::error::Result;
use crate::pubsub::{SubscribeOptions, Subscription};

pub(crate) async fn subscribe(p: &Prepared) -> Result<Subscription> {
    p.subscriber.subscribe(&p.info.topic, SubscribeOptions::group(p.group.clone())).await.map_err(|e| {
        e.context(format_args!("handler `{}` cannot subscribe to `{}`", p.info.name, p.info.topic))
    })
}

/// Runs one handler until intake stops. Owns its subscription (subscribing itself if not given
/// one), and re-subscribes if the backend ends the stream while the router is still running.
pub(crate) async fn run(p: Prepared, mut subscription: Option<Subscription>) {
    let p = Arc::new(p);
    loop {
        let sub = match subscription.take() {
            Some(sub) => sub,
            None => match subscribe(&p).await {
                Ok(sub) => sub,
                Err(error) => {
                    tracing::error!(handler = %p.info.name, %error, "subscribe failed; retrying");
                    if pause(&p).await {
                        return;
                    }
                    continue;
                }
            },
        };
        p.up.store(true, std::sync::atomic::Ordering::Release);
        if let Some(spec) = p.batch {
            super::batch::consume(&p, sub, spec).await;
        } else if p.concurrency == 1 {
            consume_serial(&p, sub).await;
        } else {
            super::lanes::consume(&p, sub).await;
        }
        p.up.store(false, std::sync::atomic::Ordering::Release);
        if p.intake.is_stopped() {
            return;
        }
        tracing::warn!(handler = %p.info.name, topic = %p.info.topic, "subscription ended; re-subscribing");
        if pause(&p).await {
            return;
        }
    }
}

/// Waits the re-subscribe backoff; true if intake stopped meanwhile.
async fn pause(p: &Prepared) -> bool {
    tokio::select! {
        _ = p.intake.cancelled() => true,
        _ = tokio::time::sleep(p.config.resubscribe_backoff) => false,
    }
}

async fn consume_serial(p: &Prepared, mut sub: Subscription) {
    // Waits on a child token of this worker's own: registering the waker locks a node no other
    // worker touches.
    let intake = p.intake.token().child_token();
    let mut cancelled = pin!(intake.cancelled());
    // What is left of the delivery in hand, once [`handle`] could not finish it; reused from
    // message to message.
    let mut slot = pin!(super::lanes::empty_slot(p, handle));
    // Where the handler's calls are made, one after the other (see `CallSlot`).
    let mut calls = p.chain.call_slot();
    // Deliveries that `handle` finishes without waiting are handled right here, one after the
    // other. (The subscription yields to the scheduler on its own: the in-memory one through
    // tokio's budget, the brokers whenever they have nothing ready.)
    poll_fn(|cx| loop {
        if let Some(handling) = slot.as_mut().as_pin_mut() {
            std::task::ready!(handling.poll(cx));
            slot.set(None);
        }
        match std::task::ready!(next_delivery(&p.intake, &mut sub, cancelled.as_mut(), cx)) {
            Some(Ok(delivery)) => {
                if let Some(left) = handle(p, delivery, cx, &mut calls).into_handling() {
                    slot.set(Some(left));
                }
            }
            Some(Err(error)) => tracing::warn!(handler = %p.info.name, %error, "subscription error"),
            None => return Poll::Ready(()),
        }
    })
    .await;
}
