//! [`RouterConfig`]: the settings a router runs with, fixed when the app is built.

use std::time::Duration;

/// Router settings, given to [`App::config`](crate::App::config).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RouterConfig {
    /// How long shutdown waits for in-flight messages. Default 30 s.
    pub close_timeout: Duration,
    /// Where messages that failed permanently go (decode failures, `Error::permanent`), with the
    /// reason in their metadata, before they are acked. Default `Some("millstream.poison")`;
    /// `None` rejects them: the broker's dead letter takes them where it has one
    /// ([`Features::dead_letter`](crate::pubsub::Features::dead_letter)), else they are dropped.
    pub poison_topic: Option<String>,
    /// Redelivery delay asked for on nack, where the backend honours it. Default none.
    pub nack_delay: Option<Duration>,
    /// Pause before re-subscribing when a subscription ends unexpectedly. Default 500 ms.
    pub resubscribe_backoff: Duration,
    /// A failed message whose redelivery delay (the error's
    /// [`retry_after`](crate::Error::retry_after), else [`nack_delay`](Self::nack_delay)) is at
    /// least this long is **requeued** instead of nacked, where the handler's publisher delays
    /// ([`Publisher::delays`](crate::Publisher::delays): an app with [`delays`](crate::App::delays)):
    /// a copy goes to the handler's topic through the delay store, due after the delay, for the
    /// handler's group only, and the original is acked. The broker's partition or queue is not
    /// held meanwhile (a Kafka partition, a SQL group, a NATS consumer's ack-pending slot), and
    /// the wait survives restarts where the store does. The handler sees the true attempt
    /// (attempts before the requeue plus the broker's count). The copy goes behind the messages
    /// published meanwhile: order is not kept for a requeued message. Default `None`: never
    /// (opt in with a durable delay store: with a
    /// [`MemoryDelayStore`](crate::delay::MemoryDelayStore) a requeued message lives only in the
    /// process). Consumers of the topic other than this handler's group see the copy under an
    /// id of its own (millstream's ack it unhandled).
    pub requeue_after: Option<Duration>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            close_timeout: Duration::from_secs(30),
            poison_topic: Some("millstream.poison".to_owned()),
            nack_delay: None,
            resubscribe_backoff: Duration::from_millis(500),
            requeue_after: None,
        }
    }
}

impl RouterConfig {
    /// Sets [`close_timeout`](RouterConfig::close_timeout).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Sets [`poison_topic`](RouterConfig::poison_topic).
    pub fn poison_topic(mut self, topic: impl Into<String>) -> Self {
        self.poison_topic = Some(topic.into());
        self
    }

    /// Sends permanent failures to no poison topic: they are rejected (see
    /// [`poison_topic`](RouterConfig::poison_topic)).
    pub fn without_poison_topic(mut self) -> Self {
        self.poison_topic = None;
        self
    }

    /// Sets [`nack_delay`](RouterConfig::nack_delay).
    pub fn nack_delay(mut self, delay: Option<Duration>) -> Self {
        self.nack_delay = delay;
        self
    }

    /// Sets [`requeue_after`](RouterConfig::requeue_after).
    pub fn requeue_after(mut self, threshold: Option<Duration>) -> Self {
        self.requeue_after = threshold;
        self
    }

    /// Sets [`resubscribe_backoff`](RouterConfig::resubscribe_backoff).
    pub fn resubscribe_backoff(mut self, backoff: Duration) -> Self {
        self.resubscribe_backoff = backoff;
        self
    }
}
