//! Request–reply: [`Requester::request`] publishes a query and waits for the reply of whichever
//! handler reads the query's topic.
//!
//! The replying handler is an ordinary handler: a request carries the topic its replies go to
//! (`millstream.reply_to`), and the router sends what the handler returns there, instead of to
//! the values' own topics, as a reply to the request (`millstream.reply_for`); an empty reply when
//! it returns nothing. A handler that fails for good (a permanent error, or one a
//! [`PoisonQueue`](crate::middleware::PoisonQueue) takes) sends an error reply, which the
//! requester returns as [`RequestError::Remote`]; a transient failure sends nothing (the request
//! is delivered again, and answered then or the requester times out).
//!
//! Each `Requester` reads one reply topic of its own (`millstream.replies.<uuid>`), without a
//! consumer group, from the moment it connects, and deletes it when closed; replies to requests
//! it no longer waits for are dropped. Queries and replies are JSON.
//!
//! ```
//! use std::time::Duration;
//! use millstream::prelude::*;
//! use millstream::Requester;
//!
//! #[derive(Serialize, Deserialize)]
//! #[millstream::topic("prices.quote")]
//! struct Quote { sku: String }
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! #[millstream::topic("prices.quoted")]
//! struct Price { cents: u64 }
//!
//! #[millstream::handler]
//! async fn quote(query: Quote) -> Price {
//!     Price { cents: query.sku.len() as u64 * 100 }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
//! let pubsub = MemoryPubSub::new();
//! let router = App::new().handler(quote).pubsub(pubsub.clone()).start().await?;
//! let requester = Requester::connect(pubsub.clone()).await?;
//! let price: Price = requester.request(&Quote { sku: "abc".into() }, Duration::from_secs(5)).await?;
//! assert_eq!(price, Price { cents: 300 });
//! requester.close().await?; // and its reply topic is deleted
//! router.close().await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::codec::{Codec, JsonCodec};
use crate::error::{Error, ErrorKind, Result};
use crate::keys::{reply, CORRELATION_ID};
use crate::message::{Message, MessageId};
use crate::pubsub::{PubSub, Publisher, SubscribeOptions};
use crate::topic::{typed_message, Topic};

/// Why a request got no value back.
#[derive(Debug)]
pub enum RequestError {
    /// No reply within the time given.
    Timeout(Duration),
    /// The handler failed for good; its error (kind and text) as it sent it back.
    Remote(Error),
    /// The request could not be sent, or its reply not decoded.
    Failed(Error),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Timeout(after) => write!(f, "no reply within {after:?}"),
            RequestError::Remote(error) => write!(f, "the handler failed: {error}"),
            RequestError::Failed(error) => write!(f, "request failed: {error}"),
        }
    }
}

/// `?` in a handler: a timeout is a transient [`ErrorKind::Timeout`], a remote error keeps its
/// kind and permanence. (`RequestError` is not a `std::error::Error`, so that this conversion,
/// and not `Error`'s blanket one for every such error, applies.)
impl From<RequestError> for Error {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Timeout(after) => {
                Error::new(ErrorKind::Timeout, format!("no reply to a request within {after:?}"))
            }
            RequestError::Remote(error) | RequestError::Failed(error) => error,
        }
    }
}

/// Sends requests and waits for their replies; cheap to clone (clones share the reply topic).
#[derive(Clone)]
pub struct Requester {
    inner: Arc<Inner>,
    /// What every request of this handle carries (clones made with
    /// [`correlation_id`](Requester::correlation_id) share the reply topic, not this).
    correlation_id: Option<Arc<str>>,
}

struct Inner {
    pubsub: Arc<dyn PubSub>,
    publisher: Arc<dyn Publisher>,
    reply_topic: String,
    waiting: Mutex<HashMap<MessageId, oneshot::Sender<Message>>>,
    stop: CancellationToken,
    /// The task reading replies, until closed.
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The last handle dropped without [`Requester::close`]: the reply topic is deleted in the
/// background (best effort, logged at debug level when it fails).
impl Drop for Inner {
    fn drop(&mut self) {
        let Some(reader) = self.reader.get_mut().take() else { return };
        self.stop.cancel();
        let (pubsub, topic) = (self.pubsub.clone(), std::mem::take(&mut self.reply_topic));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = reader.await;
                if let Err(error) = pubsub.delete_topic(&topic).await {
                    tracing::debug!(%error, topic, "a dropped requester's reply topic could not be deleted");
                }
            });
        }
    }
}

impl Requester {
    /// Subscribes to a reply topic of its own on `pubsub`; requests are published there too.
    pub async fn connect(pubsub: impl PubSub) -> Result<Self> {
        let pubsub: Arc<dyn PubSub> = Arc::new(pubsub);
        let reply_topic = format!("millstream.replies.{}", uuid::Uuid::now_v7().simple());
        let mut replies = pubsub.subscribe(&reply_topic, SubscribeOptions::default()).await?;
        let publisher: Arc<dyn Publisher> = Arc::new(PubSubPublisher(pubsub.clone()));
        let inner = Arc::new(Inner {
            pubsub,
            publisher,
            reply_topic,
            waiting: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            reader: Mutex::new(None),
        });
        let reader = Arc::downgrade(&inner);
        let stop = inner.stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = replies.next() => next,
                    () = stop.cancelled() => break,
                };
                let delivery = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "reading replies failed");
                        continue;
                    }
                    None => break,
                };
                let Some(inner) = reader.upgrade() else { break };
                let (message, _, acker) = delivery.into_parts();
                let request = message.metadata().get(reply::FOR).and_then(|id| MessageId::parse(id).ok());
                if let Some(waiter) = request.and_then(|id| inner.waiting.lock().remove(&id)) {
                    let _ = waiter.send(message);
                } else {
                    tracing::debug!(id = %message.id(), "a reply to no waiting request; dropped");
                }
                if let Err(error) = acker.ack().await {
                    tracing::debug!(%error, "acking a reply failed");
                }
            }
        });
        *inner.reader.lock() = Some(task);
        Ok(Requester { inner, correlation_id: None })
    }

    /// A handle whose requests carry this correlation id; it shares the reply topic (and its
    /// reader) with this one.
    pub fn correlation_id(&self, id: impl Into<Arc<str>>) -> Self {
        Requester { inner: self.inner.clone(), correlation_id: Some(id.into()) }
    }

    /// The topic replies come back on.
    pub fn reply_topic(&self) -> &str {
        &self.inner.reply_topic
    }

    /// Publishes `query` to its type's topic and waits up to `timeout` for the reply, decoded as
    /// `R` (`()` for a handler that returns nothing).
    pub async fn request<Q, R>(&self, query: &Q, timeout: Duration) -> Result<R, RequestError>
    where
        Q: Topic + Serialize + Sync,
        R: DeserializeOwned,
    {
        let payload = JsonCodec.encode(query).map_err(RequestError::Failed)?;
        self.send(Q::NAME, typed_message(payload, Q::MESSAGE_TYPE), timeout).await
    }

    /// [`request`](Self::request) to a topic given by name.
    pub async fn request_to<Q, R>(&self, topic: &str, query: &Q, timeout: Duration) -> Result<R, RequestError>
    where
        Q: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let payload = JsonCodec.encode(query).map_err(RequestError::Failed)?;
        self.send(topic, Message::new(payload), timeout).await
    }

    async fn send<R: DeserializeOwned>(
        &self,
        topic: &str,
        mut message: Message,
        timeout: Duration,
    ) -> Result<R, RequestError> {
        let inner = &self.inner;
        message.metadata_mut().insert_static(reply::TO, inner.reply_topic.as_str());
        if let Some(id) = &self.correlation_id {
            message.metadata_mut().insert_static(CORRELATION_ID, &**id);
        }
        let id = message.id();
        let (tx, rx) = oneshot::channel();
        inner.waiting.lock().insert(id, tx);
        // Forgets the request however this future ends (timeout, error, dropped).
        let _forget = Forget(inner, id);
        inner.publisher.publish(topic, message).await.map_err(RequestError::Failed)?;
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => {
                return Err(RequestError::Failed(Error::new(ErrorKind::Closed, "the requester closed")))
            }
            Err(_) => return Err(RequestError::Timeout(timeout)),
        };
        if let Some(text) = reply.metadata().get(reply::ERROR) {
            let kind = reply.metadata().get(reply::ERROR_KIND).map_or(ErrorKind::Handler, kind_from_name);
            let mut error = Error::new(kind, text.to_owned());
            if kind != ErrorKind::Timeout && kind != ErrorKind::Backend {
                error = error.into_permanent();
            }
            return Err(RequestError::Remote(error));
        }
        // A handler that returned nothing replies with an empty payload: `()` (or `None`).
        let payload: &[u8] = if reply.payload().is_empty() { b"null" } else { reply.payload() };
        JsonCodec.decode(payload).map_err(RequestError::Failed)
    }

    /// Stops reading replies (requests still waiting fail), then deletes the reply topic (on a
    /// backend that keeps topics: its stream, table rows or queue). Every clone of this handle
    /// is closed with it; a second call does nothing. Dropping the last handle without closing
    /// it deletes the topic in the background.
    pub async fn close(&self) -> Result<()> {
        let Some(reader) = self.inner.reader.lock().take() else { return Ok(()) };
        self.inner.stop.cancel();
        self.inner.waiting.lock().clear();
        let _ = reader.await;
        self.inner.pubsub.delete_topic(&self.inner.reply_topic).await
    }
}

impl fmt::Debug for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requester")
            .field("reply_topic", &self.inner.reply_topic)
            .field("waiting", &self.inner.waiting.lock().len())
            .finish_non_exhaustive()
    }
}

/// Removes a request from the waiting ones when dropped.
struct Forget<'a>(&'a Inner, MessageId);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.waiting.lock().remove(&self.1);
    }
}

/// Publishes through a shared pub/sub.
struct PubSubPublisher(Arc<dyn PubSub>);

impl Publisher for PubSubPublisher {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> crate::pubsub::OpFuture<'a> {
        self.0.publish(topic, message)
    }

    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> crate::pubsub::OpFuture<'a> {
        self.0.publish_batch(topic, messages)
    }

    fn close(&self) -> crate::pubsub::OpFuture<'_> {
        crate::pubsub::OpFuture::ready(Ok(()))
    }
}

/// The kind an error reply names (its `Debug` form).
fn kind_from_name(name: &str) -> ErrorKind {
    match name {
        "Decode" => ErrorKind::Decode,
        "Encode" => ErrorKind::Encode,
        "Panic" => ErrorKind::Panic,
        "Timeout" => ErrorKind::Timeout,
        "Backend" => ErrorKind::Backend,
        "Closed" => ErrorKind::Closed,
        "Config" => ErrorKind::Config,
        _ => ErrorKind::Handler,
    }
}
