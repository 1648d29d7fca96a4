//! How to subscribe ([`SubscribeOptions`], [`StartFrom`], per-backend [`Extensions`]) and what a
//! subscription is ([`Subscription`], a stream of deliveries).

use std::any::{Any, TypeId};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures_core::Stream;

use super::Delivery;
use crate::error::Result;

/// Where a subscription without history of its own (a new group) starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartFrom {
    /// The backend's default (the in-memory backend: what is published from now on, plus
    /// retained history; SQL: a new group from the first retained row, a subscription without a
    /// group from now on; NATS: the stream's beginning for a new durable consumer).
    #[default]
    Default,
    /// The oldest message the backend still holds (SQL: also for a subscription without a group).
    Earliest,
    /// Only what is published after the subscription (SQL: also for a new group).
    Latest,
    /// The first message stored at or after this time, where the backend can find it (SQL: the
    /// default instead).
    Time(SystemTime),
}

/// Typed options of one backend that do not belong in every backend's [`SubscribeOptions`]
/// (an AMQP queue's arguments, an MQTT QoS, a consumer name): each backend defines its own option
/// types and reads them with [`get`](Extensions::get); backends ignore what they do not know.
#[derive(Clone, Default)]
pub struct Extensions {
    entries: Vec<(TypeId, Arc<dyn Any + Send + Sync>)>,
}

impl Extensions {
    /// Adds (or replaces) the option of type `T`.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        let id = TypeId::of::<T>();
        self.entries.retain(|(t, _)| *t != id);
        self.entries.push((id, Arc::new(value)));
    }

    /// The option of type `T`, if given.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        self.entries.iter().find(|(t, _)| *t == id).and_then(|(_, v)| v.downcast_ref::<T>())
    }

    /// Whether no option was given.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions").field("count", &self.entries.len()).finish()
    }
}

impl PartialEq for Extensions {
    /// Equal when both hold options of the same types (values are not compared).
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().all(|(t, _)| other.entries.iter().any(|(u, _)| t == u))
    }
}

/// How to subscribe.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// The consumer group; `None` gives the subscription every message on its own, from the
    /// moment it subscribes.
    pub group: Option<String>,
    /// Where a new group starts (see [`StartFrom`]).
    pub start: StartFrom,
    /// At most this many deliveries unsettled at once, where the backend can bound them (a
    /// prefetch, a pull batch); `None`: the backend's default.
    pub max_in_flight: Option<usize>,
    /// The topic is a pattern in the broker's syntax (MQTT `+`/`#`, NATS `*`/`>`), where the
    /// backend has patterns; each delivery's [`DeliveryInfo::topic`](crate::DeliveryInfo::topic)
    /// then names the concrete topic.
    pub pattern: bool,
    /// Options of one backend (see [`Extensions`]).
    pub extensions: Extensions,
}

impl SubscribeOptions {
    /// Options for a subscription in `group`.
    pub fn group(group: impl Into<String>) -> Self {
        SubscribeOptions { group: Some(group.into()), ..Self::default() }
    }

    /// Sets where a new group starts.
    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Bounds the deliveries unsettled at once.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = Some(max.max(1));
        self
    }

    /// Marks the topic as a pattern.
    pub fn pattern(mut self) -> Self {
        self.pattern = true;
        self
    }

    /// Adds an option of one backend.
    pub fn extension<T: std::any::Any + Send + Sync>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }
}

/// A stream of [`Delivery`]s from one subscription. Dropping it unsubscribes.
pub struct Subscription {
    stream: Pin<Box<dyn Stream<Item = Result<Delivery>> + Send>>,
}

impl Subscription {
    /// Wraps a backend's stream. An `Err` item reports a problem the backend could not recover
    /// from by itself; the stream may go on after it.
    pub fn new(stream: impl Stream<Item = Result<Delivery>> + Send + 'static) -> Self {
        Subscription { stream: Box::pin(stream) }
    }

    /// The next delivery; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        std::future::poll_fn(|cx| self.stream.as_mut().poll_next(cx)).await
    }
}

impl Stream for Subscription {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscription")
    }
}
