//! [`PoisonQueue`] (dead-letter topic) and [`RedeliveryCap`].

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_core::future::BoxFuture;

use super::fused::{call_single, Step};
use super::{FusedStep, Middleware, Next};
use crate::error::Error;
use crate::handler::{HandlerResult, Outputs};
use crate::keys::poison as poison_keys;
use crate::message::Message;

type Filter = Box<dyn Fn(&Error) -> bool + Send + Sync>;

/// Sends messages that failed to a dead-letter topic, then acks them.
///
/// Which failures: by default every error that reaches it (place a [`Retry`](super::Retry) inside
/// it for in-process retries); with [`after_deliveries(n)`](PoisonQueue::after_deliveries),
/// transient errors are nacked (redelivered by the backend) until the `n`-th delivery, and
/// permanent ones go at once; a [`filter`](PoisonQueue::filter) narrows it further.
///
/// The poisoned message keeps its id, payload and metadata, plus `millstream.poison.*` entries:
/// the error text, its kind, the handler, the original topic, the attempt and the time (Unix
/// milliseconds). If publishing it fails, the original is nacked.
#[derive(Clone)]
pub struct PoisonQueue {
    inner: Arc<Inner>,
}

struct Inner {
    topic: String,
    after_deliveries: Option<u32>,
    filter: Option<Filter>,
}

impl PoisonQueue {
    /// Poisons to `topic`.
    pub fn new(topic: impl Into<String>) -> Self {
        PoisonQueue { inner: Arc::new(Inner { topic: topic.into(), after_deliveries: None, filter: None }) }
    }

    fn edit(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        f(Arc::get_mut(&mut self.inner).expect("configure a PoisonQueue before sharing it"));
        self
    }

    /// Lets the backend redeliver transient failures until the `n`-th delivery.
    pub fn after_deliveries(self, n: u32) -> Self {
        self.edit(|i| i.after_deliveries = Some(n.max(1)))
    }

    /// Poisons only errors for which `filter` is true; others pass through (and are nacked).
    pub fn filter(self, filter: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.edit(|i| i.filter = Some(Box::new(filter)))
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    pub(super) fn should_poison(&self, error: &Error, attempt: u32) -> bool {
        let i = &self.inner;
        if let Some(filter) = &i.filter {
            if !filter(error) {
                return false;
            }
        }
        match i.after_deliveries {
            Some(n) => error.is_permanent() || attempt >= n,
            None => true,
        }
    }
}

/// The message as sent to a poison topic: same id, payload and metadata, plus why.
pub fn poisoned(original: Message, error: &Error, handler: &str, topic: &str, attempt: u32) -> Message {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    original
        .with_static_header(poison_keys::REASON, error.to_string())
        .with_static_header(poison_keys::KIND, format!("{:?}", error.kind()))
        .with_static_header(poison_keys::HANDLER, handler)
        .with_static_header(poison_keys::TOPIC, topic)
        .with_static_header(poison_keys::ATTEMPT, attempt.to_string())
        .with_static_header(poison_keys::TIME, millis.to_string())
}

impl PoisonQueue {
    /// Publishes `original`, which failed with `error` on delivery `attempt`, to the poison topic:
    /// no outputs once it is there, the publish error otherwise (so the original is nacked).
    pub(super) fn publish(
        &self,
        handle: Next,
        original: Message,
        error: &Error,
        attempt: u32,
    ) -> BoxFuture<'static, HandlerResult> {
        let this = self.clone();
        let id = original.id();
        let dead = poisoned(original, error, handle.handler_name(), handle.topic(), attempt);
        let error = error.to_string();
        Box::pin(async move {
            match handle.publisher().publish(&this.inner.topic, dead).await {
                Ok(()) => {
                    tracing::error!(
                        handler = %handle.handler_name(),
                        topic = %handle.topic(),
                        message_id = %id,
                        attempt,
                        poison_topic = %this.inner.topic,
                        %error,
                        "message poisoned",
                    );
                    crate::observe::poisoned(handle.handler_name());
                    Ok(Outputs::new())
                }
                Err(publish_error) => Err(publish_error.context(format_args!(
                    "poisoning a message that failed with `{error}` to `{}`",
                    this.inner.topic
                ))),
            }
        })
    }
}

impl Middleware for PoisonQueue {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        call_single(Step::Poison(self.clone()), message, next)
    }

    fn fused_step(&self) -> Option<FusedStep> {
        Some(FusedStep(Step::Poison(self.clone())))
    }
}

impl fmt::Debug for PoisonQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoisonQueue")
            .field("topic", &self.inner.topic)
            .field("after_deliveries", &self.inner.after_deliveries)
            .finish_non_exhaustive()
    }
}

/// Stops a message that keeps coming back: from delivery `max + 1` on, the handler is not called
/// and the message fails permanently (so a [`PoisonQueue`], or the router's poison topic, takes
/// it). For backends that redeliver forever.
#[derive(Clone, Copy, Debug)]
pub struct RedeliveryCap {
    max: u32,
}

impl RedeliveryCap {
    /// Allows `max` deliveries.
    pub fn new(max: u32) -> Self {
        RedeliveryCap { max: max.max(1) }
    }
}

impl Middleware for RedeliveryCap {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        call_single(Step::Cap(self.max), message, next)
    }

    fn fused_step(&self) -> Option<FusedStep> {
        Some(FusedStep(Step::Cap(self.max)))
    }
}
