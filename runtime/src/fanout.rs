//! [`FanOut`]: one subscription to a broker feeding many in-process subscriptions (Watermill's
//! `FanOut`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::Result;
use crate::op::OpFuture;
use crate::pubsub::memory::MemoryPubSub;
use crate::pubsub::{closed_error, Features, SubscribeOptions, Subscriber, Subscription};

/// A [`Subscriber`] that reads each topic from another subscriber **once**, in one consumer
/// group, and hands every message to all of its own subscriptions in the process: many handlers
/// (each in its own group, as usual) on one broker subscription, so the broker sees one consumer
/// of the topic however many handlers read it.
///
/// ```
/// # use std::sync::Arc;
/// # use millstream::{App, MemoryPubSub};
/// # use millstream::fanout::FanOut;
/// # let broker = MemoryPubSub::new();
/// // Every handler of the app reads through one subscription per topic, in group "svc".
/// let fan_out = FanOut::new(Arc::new(broker.clone()), "svc");
/// let app = App::new().pubsub_parts(Arc::new(broker), Arc::new(fan_out));
/// # let _ = app;
/// ```
///
/// # Delivery
/// A message read from the upstream subscription is put in the queue of every local subscription
/// of its topic (an in-memory [`MemoryPubSub`], waiting while one is full: backpressure reaches the
/// broker) and acked upstream then. So the broker's at-least-once ends at the fan-out: a process
/// that dies with messages queued loses them (Watermill's `FanOut` behaves the same). Use it for
/// handlers that can afford that (caches, projections rebuilt from the log, notifications), not
/// for ones that must see every message. Local subscriptions settle with the in-memory backend
/// (a nack redelivers locally, with its attempts counted). A local subscription made after
/// messages arrived gets only later ones.
pub struct FanOut {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: Arc<dyn Subscriber>,
    group: String,
    local: MemoryPubSub,
    pumps: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Serialises starting pumps, so that a topic gets one.
    starting: tokio::sync::Mutex<()>,
    closed: AtomicBool,
}

impl FanOut {
    /// Reads each topic from `upstream` in the consumer group `group`.
    pub fn new(upstream: Arc<dyn Subscriber>, group: impl Into<String>) -> Self {
        Self::with_local(upstream, group, MemoryPubSub::new())
    }

    /// [`new`](Self::new), queueing for the local subscriptions in `local` (its capacity bounds
    /// each local subscription's queue).
    pub fn with_local(upstream: Arc<dyn Subscriber>, group: impl Into<String>, local: MemoryPubSub) -> Self {
        FanOut {
            inner: Arc::new(Inner {
                upstream,
                group: group.into(),
                local,
                pumps: Mutex::new(HashMap::new()),
                starting: tokio::sync::Mutex::new(()),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The topics read upstream so far.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.inner.pumps.lock().keys().cloned().collect();
        topics.sort();
        topics
    }
}

impl Inner {
    /// Subscribes upstream to `topic` unless already done, and starts moving its messages.
    async fn ensure_pump(&self, topic: &str) -> Result<()> {
        let _starting = self.starting.lock().await;
        if self.pumps.lock().get(topic).is_some_and(|pump| !pump.is_finished()) {
            return Ok(());
        }
        let upstream = self.upstream.subscribe(topic, SubscribeOptions::group(self.group.clone())).await?;
        let pump = tokio::spawn(pump(upstream, self.local.clone(), topic.to_owned()));
        self.pumps.lock().insert(topic.to_owned(), pump);
        Ok(())
    }
}

/// Moves `topic`'s messages from the upstream subscription to the local ones, acking each
/// upstream once queued locally.
async fn pump(mut upstream: Subscription, local: MemoryPubSub, topic: String) {
    use crate::pubsub::Publisher as _;
    while let Some(item) = upstream.next().await {
        let delivery = match item {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::warn!(%topic, %error, "fan-out: the upstream subscription reported an error");
                continue;
            }
        };
        let message = delivery.message().clone();
        let settled = match local.publish(&topic, message).await {
            Ok(()) => delivery.ack().await,
            Err(error) => {
                tracing::warn!(%topic, %error, "fan-out: queueing locally failed; nacking upstream");
                delivery.nack().await
            }
        };
        if let Err(error) = settled {
            tracing::warn!(%topic, %error, "fan-out: settling upstream failed; the message may come again");
        }
    }
    tracing::debug!(%topic, "fan-out: the upstream subscription ended");
}

impl Subscriber for FanOut {
    /// A local subscription to `topic` (in `options`' group, as on the in-memory backend); the
    /// first one of a topic subscribes upstream.
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription> {
        OpFuture::boxed(async move {
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(closed_error("fan-out closed"));
            }
            // Local first, so that nothing read upstream arrives before it exists.
            let local = self.inner.local.subscribe(topic, options).await?;
            self.inner.ensure_pump(topic).await?;
            Ok(local)
        })
    }

    /// Stops reading upstream, ends the local subscriptions and closes the upstream subscriber.
    fn close(&self) -> OpFuture<'_> {
        OpFuture::boxed(async move {
            self.inner.closed.store(true, Ordering::Release);
            let pumps: Vec<_> = self.inner.pumps.lock().drain().map(|(_, pump)| pump).collect();
            for pump in pumps {
                pump.abort();
            }
            crate::pubsub::Subscriber::close(&self.inner.local).await?;
            self.inner.upstream.close().await
        })
    }

    /// The in-memory backend's features: local subscriptions are in-memory ones.
    fn features(&self) -> Features {
        self.inner.local.features()
    }
}

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut")
            .field("group", &self.inner.group)
            .field("topics", &self.topics())
            .finish_non_exhaustive()
    }
}
