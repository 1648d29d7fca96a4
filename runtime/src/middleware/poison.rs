//! [`PoisonQueue`]: sends messages that failed to a dead-letter topic.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_core::future::BoxFuture;

use super::chain::{Middleware, Next};
use super::step::{BuiltIn, Cx, Frame, Leave, Shape, Step};
use crate::context::RouteInfo;
use crate::error::Error;
use crate::handler::{HandlerResult, Outgoing, Outputs};
use crate::keys::poison as poison_keys;
use crate::message::Message;

type Filter = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

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
///
/// Clone it and change the clone to derive a variant; the original is not affected.
#[derive(Clone)]
pub struct PoisonQueue {
    inner: Arc<Inner>,
}

#[derive(Clone)]
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

    /// Changes the settings; a queue that shares them with a clone gets a copy of its own.
    fn edit(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        f(Arc::make_mut(&mut self.inner));
        self
    }

    /// Lets the backend redeliver transient failures until the `n`-th delivery.
    pub fn after_deliveries(self, n: u32) -> Self {
        self.edit(|i| i.after_deliveries = Some(n.max(1)))
    }

    /// Poisons only errors for which `filter` is true; others pass through (and are nacked).
    pub fn filter(self, filter: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.edit(|i| i.filter = Some(Arc::new(filter)))
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// Whether a failure with `error` on delivery `attempt` goes to the poison topic.
    fn should_poison(&self, error: &Error, attempt: u32) -> bool {
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
    fn publish(
        &self,
        route: Arc<RouteInfo>,
        original: Message,
        error: &Error,
        attempt: u32,
    ) -> BoxFuture<'static, HandlerResult> {
        let this = self.clone();
        let id = original.id();
        // A request is answered: the error travels back as its reply (the router sends outputs
        // of a request to its reply topic).
        let reply = crate::reply::reply_topic(&original).map(|to| (to, crate::reply::error_reply(id, error)));
        let dead = poisoned(original, error, &route.name, &route.topic, attempt);
        let error = error.to_string();
        Box::pin(async move {
            let topic = &this.inner.topic;
            match route.publisher.publish(topic, dead).await {
                Ok(()) => {
                    tracing::error!(
                        handler = %route.name,
                        topic = %route.topic,
                        message_id = %id,
                        attempt,
                        poison_topic = %topic,
                        %error,
                        "message poisoned",
                    );
                    crate::observe::poisoned(&route.name);
                    let mut outputs = Outputs::new();
                    if let Some((to, reply)) = reply {
                        outputs.push(Outgoing { topic: Some(to.into_string().into()), message: reply });
                    }
                    Ok(outputs)
                }
                Err(publish_error) => Err(publish_error
                    .context(format_args!("poisoning a message that failed with `{error}` to `{topic}`"))),
            }
        })
    }
}

/// Leaving with an error it takes, the step asks the engine to await the publish (under the
/// deadlines and panic guards of the layers outside it); its result replaces the error.
impl Step for PoisonQueue {
    fn shape(&self) -> Shape {
        let reads_attempts = self.inner.after_deliveries.map(|_| "PoisonQueue::after_deliveries");
        Shape { keeps_message: true, reads_attempts, ..Shape::default() }
    }

    fn leave(&self, outcome: &mut HandlerResult, frame: &Frame, cx: &Cx<'_>) -> Leave {
        let Err(error) = outcome else { return Leave::Pass };
        if !self.should_poison(error, frame.attempt) {
            return Leave::Pass;
        }
        let original = cx.message.cloned().expect("the poison step keeps the message");
        Leave::Await(self.publish(cx.route.clone(), original, error, frame.attempt))
    }
}

impl Middleware for PoisonQueue {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        next.run_step(self.clone(), message)
    }

    fn __built_in(&self) -> Option<BuiltIn> {
        Some(BuiltIn::new(self.clone()))
    }
}

/// [`PoisonQueue::new`]`(topic)`, for attribute lists: `#[handler(middleware = [poison("dead")])]`.
pub fn poison(topic: &str) -> PoisonQueue {
    PoisonQueue::new(topic)
}

impl fmt::Debug for PoisonQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoisonQueue")
            .field("topic", &self.inner.topic)
            .field("after_deliveries", &self.inner.after_deliveries)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variant_derived_from_a_shared_queue_leaves_the_original_alone() {
        let base = PoisonQueue::new("dead").filter(|e| e.message() != "skip");
        let shared = base.clone();
        let patient = base.clone().after_deliveries(3);
        let transient = Error::msg("flaky");
        assert!(!patient.should_poison(&transient, 1), "redelivered until the third delivery");
        assert!(patient.should_poison(&transient, 3));
        assert!(shared.should_poison(&transient, 1), "the original poisons at once");
        assert!(!patient.should_poison(&Error::msg("skip"), 5), "the derived one keeps the filter");
        assert_eq!(patient.topic(), "dead");
    }
}
