//! The conformance suite against `MemoryPubSub`.
//!
//! A "connection" is a handle on one shared `MemoryPubSub`: closing a handle makes that handle
//! refuse work and ends the subscriptions made through it, but leaves the shared pub/sub (and the
//! other handles) running, as closing one client of a broker would.
#![cfg(feature = "conformance")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use millstream::conformance::{BoxFuture, Harness};
use millstream::pubsub::{closed_error, Features, OpFuture, PubSub};
use millstream::{MemoryPubSub, Message, Publisher, SubscribeOptions, Subscriber, Subscription};
use tokio_util::sync::CancellationToken;

struct MemoryHarness {
    shared: MemoryPubSub,
}

struct Handle {
    shared: MemoryPubSub,
    closed: AtomicBool,
    cancel: CancellationToken,
}

impl Publisher for Handle {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        if self.closed.load(Ordering::Acquire) {
            return OpFuture::ready(Err(closed_error("handle closed")));
        }
        self.shared.publish(topic, message)
    }

    fn close(&self) -> OpFuture<'_> {
        self.closed.store(true, Ordering::Release);
        self.cancel.cancel();
        OpFuture::ready(Ok(()))
    }
}

impl Subscriber for Handle {
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription> {
        if self.closed.load(Ordering::Acquire) {
            return OpFuture::ready(Err(closed_error("handle closed")));
        }
        OpFuture::boxed(async move {
            let sub = self.shared.subscribe(topic, options).await?;
            let cancel = self.cancel.clone();
            Ok(Subscription::new(sub.take_until(cancel.cancelled_owned())))
        })
    }

    fn close(&self) -> OpFuture<'_> {
        Publisher::close(self)
    }

    fn features(&self) -> Features {
        self.shared.features()
    }
}

impl Harness for MemoryHarness {
    fn name(&self) -> &str {
        "memory"
    }

    fn connect(&self) -> BoxFuture<'_, millstream::Result<Arc<dyn PubSub>>> {
        let handle = Handle {
            shared: self.shared.clone(),
            closed: AtomicBool::new(false),
            cancel: CancellationToken::new(),
        };
        Box::pin(async move { Ok(Arc::new(handle) as Arc<dyn PubSub>) })
    }
}

async fn harness() -> MemoryHarness {
    MemoryHarness { shared: MemoryPubSub::new() }
}

millstream::conformance_tests!(harness);
