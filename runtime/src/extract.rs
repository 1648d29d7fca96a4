//! Extractors: what a handler's arguments can be.
//!
//! A handler is an async fn whose first argument may be the payload (any `DeserializeOwned` type,
//! decoded with the handler's codec) and whose other arguments implement [`FromMessage`]:
//! [`Json<T>`], [`Bytes`] (the raw payload), [`Metadata`], [`MessageId`], [`Message`],
//! [`Attempt`], [`DeliveryInfo`], [`State<T>`] and [`Ctx`].

use std::borrow::Cow;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{Codec, JsonCodec};
pub use crate::context::MessageCx;
use crate::context::RouteInfo;
use crate::error::{Error, ErrorKind, Result};
use crate::keys::{CORRELATION_ID, TRACEPARENT};
use crate::message::{DeliveryInfo, Message, MessageId, Metadata};
use crate::state::StateMap;
use crate::topic::Publishable;
#[doc(hidden)]
pub use crate::unit::UnitOfWorkFn;

/// A handler argument built from the incoming message (and, once, from the application state).
///
/// Implement it to add your own extractor. `prepare` runs once when the handler is added to a
/// router: look up state there, so that a missing value fails start-up instead of every message.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler argument",
    label = "not an extractor",
    note = "handler arguments are the payload (first, any `DeserializeOwned` type) and extractors: \
            `Json<T>`, `Bytes`, `Metadata`, `MessageId`, `Message`, `Attempt`, `DeliveryInfo`, `State<T>`, `Ctx`, `CommandBus`, `EventBus`"
)]
pub trait FromMessage: Sized + Send + 'static {
    /// What `prepare` computes once per handler.
    type Prepared: Send + Sync + 'static;

    /// Runs once per handler, with the application state.
    fn prepare(state: &StateMap) -> Result<Self::Prepared>;

    /// Builds the argument for one message. An error fails the message (permanent errors are not
    /// retried).
    fn from_message(prepared: &Self::Prepared, message: &Message, cx: MessageCx<'_>) -> Result<Self>;

    /// The unit of work the argument runs the handler call in (a database transaction, see
    /// [`Tx`](crate::inbox::Tx)); `None` (the default) for every other extractor. Hidden: only
    /// millstream's own extractors open units.
    #[doc(hidden)]
    const UNIT_OF_WORK: Option<UnitOfWorkFn> = None;
}

macro_rules! stateless_extractor {
    ($(#[$doc:meta])* $ty:ty, |$message:ident, $cx:ident| $body:expr) => {
        $(#[$doc])*
        impl FromMessage for $ty {
            type Prepared = ();

            fn prepare(_: &StateMap) -> Result<()> {
                Ok(())
            }

            #[inline]
            fn from_message(_: &(), $message: &Message, $cx: MessageCx<'_>) -> Result<Self> {
                Ok($body)
            }
        }
    };
}

stateless_extractor!(
    /// The raw payload.
    Bytes,
    |message, _cx| message.payload().clone()
);
stateless_extractor!(
    /// The message's metadata.
    Metadata,
    |message, _cx| message.metadata().clone()
);
stateless_extractor!(
    /// The message's id.
    MessageId,
    |message, _cx| message.id()
);
stateless_extractor!(
    /// The whole message.
    Message,
    |message, _cx| message.clone()
);
stateless_extractor!(
    /// The delivery attempt.
    Attempt,
    |_message, cx| Attempt(cx.attempt)
);
stateless_extractor!(
    /// Where the message came from: the backend's [`DeliveryInfo`], with the topic filled in
    /// (the handler's topic where the backend did not name one).
    DeliveryInfo,
    |message, cx| {
        let mut info = message.delivery_info().cloned().unwrap_or_default();
        if info.topic.is_none() {
            info.topic = Some(cx.route.topic.clone());
        }
        info
    }
);
stateless_extractor!(
    /// The handler context.
    Ctx,
    |message, cx| Ctx::new(message, cx)
);

/// How many times the message has been delivered, this time included (1 the first time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempt(pub u32);

/// A payload decoded as JSON whatever the handler's codec, or a value to publish as JSON.
///
/// As an argument it extracts like the plain payload; as a return value (`Result<Json<T>, E>`) it
/// publishes any `Serialize` type to the handler's publish topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned + Send + 'static> FromMessage for Json<T> {
    type Prepared = ();

    fn prepare(_: &StateMap) -> Result<()> {
        Ok(())
    }

    #[inline]
    fn from_message(_: &(), message: &Message, _cx: MessageCx<'_>) -> Result<Self> {
        JsonCodec.decode(message.payload()).map(Json)
    }
}

impl<T> Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Serialize> Serialize for Json<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<T: Serialize + Send + Sync + 'static> Publishable for Json<T> {}

/// Shared application state of type `T`, added with `.state(value)` on the router or app.
///
/// `T` is cloned for each message: wrap large or mutable state in an `Arc`.
///
/// ```
/// # use millstream::State;
/// #[derive(Clone)]
/// struct Prices { cents_per_item: u64 }
///
/// async fn quote(qty: u32, State(prices): State<Prices>) -> millstream::Result<()> {
///     let _total = u64::from(qty) * prices.cents_per_item;
///     Ok(())
/// }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct State<T>(pub T);

impl<T: Clone + Send + Sync + 'static> FromMessage for State<T> {
    type Prepared = T;

    fn prepare(state: &StateMap) -> Result<T> {
        state.get::<T>().cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "State<{}> is used but was never provided; add it with `.state(value)`",
                    std::any::type_name::<T>()
                ),
            )
        })
    }

    #[inline]
    fn from_message(prepared: &T, _: &Message, _cx: MessageCx<'_>) -> Result<Self> {
        Ok(State(prepared.clone()))
    }
}

impl<T> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The handler's context: publish from inside a handler, read the attempt number, watch for
/// shutdown.
///
/// Values published through `Ctx` are sent at once (before the input is acked, since the handler
/// has not returned yet). Values returned by the handler are published after it returns.
#[derive(Clone)]
pub struct Ctx {
    route: Arc<RouteInfo>,
    attempt: u32,
    message_id: MessageId,
    /// Metadata the input passes on to what the handler publishes (correlation id, trace context).
    carried: Metadata,
}

/// Copies each entry of `carried` that `message` does not have into it (what a message published
/// from a handler inherits from the input: `Ctx` and the buses).
pub(crate) fn carry(carried: &Metadata, message: &mut Message) {
    for (key, value) in carried.iter() {
        if !message.metadata().contains_key(key) {
            message.metadata_mut().insert(key, value);
        }
    }
}

/// Metadata keys that messages published through [`Ctx`] inherit from the input.
const PROPAGATED: [&str; 2] = [CORRELATION_ID, TRACEPARENT];

impl Ctx {
    /// The context of the message `cx` describes: carries the input's correlation id and trace
    /// context to what the handler publishes.
    pub(crate) fn new(message: &Message, cx: MessageCx<'_>) -> Ctx {
        let mut carried = Metadata::new();
        for key in PROPAGATED {
            if let Some(value) = message.metadata().get(key) {
                carried.insert_static(key, value);
            }
        }
        if cx.route.correlates && !carried.contains_key(CORRELATION_ID) {
            carried.insert_static(CORRELATION_ID, message.id().to_boxed_str());
        }
        Ctx { route: cx.route.clone(), attempt: cx.attempt, message_id: message.id(), carried }
    }

    /// The route and the metadata passed on, for the buses that publish the same way.
    pub(crate) fn into_parts(self) -> (Arc<RouteInfo>, Metadata) {
        (self.route, self.carried)
    }

    /// The handler's name.
    pub fn handler_name(&self) -> &str {
        &self.route.name
    }

    /// The topic the message came from.
    pub fn topic(&self) -> &str {
        &self.route.topic
    }

    /// How many times this message has been delivered, this time included (1 the first time).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The id of the message being handled.
    pub fn message_id(&self) -> MessageId {
        self.message_id
    }

    /// The correlation id that what the handler publishes carries: the input's, or with a
    /// [`CorrelationId`](crate::middleware::CorrelationId) layer the input's own id when it has
    /// none.
    pub fn correlation_id(&self) -> Option<&str> {
        self.carried.get(CORRELATION_ID)
    }

    /// Publishes a typed value to its own topic (a [`Topic`](crate::Topic) type), or else to the
    /// handler's publish topic; encoded with the handler's codec.
    pub async fn publish<T: Publishable>(&self, value: &T) -> Result<()> {
        let topic = match (T::TOPIC, &self.route.publish) {
            (Some(topic), _) => Cow::Borrowed(topic),
            (None, Some(topic)) => Cow::Owned(topic.to_string()),
            (None, None) => return Err(self.no_topic(std::any::type_name::<T>())),
        };
        let payload = self.route.encoder.encode_dyn(value)?;
        self.publish_message(&topic, crate::topic::typed_message(payload, T::IDENTITY)).await
    }

    fn no_topic(&self, type_name: &str) -> Error {
        let message = format!(
            "{type_name} has no topic of its own and handler `{}` has no publish topic; use `publish_to`",
            self.route.name
        );
        Error::new(ErrorKind::Config, message)
    }

    /// Publishes a value to `topic`, encoded with the handler's codec.
    pub async fn publish_to<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<()> {
        let payload = self.route.encoder.encode_dyn(&value)?;
        self.publish_message(topic, Message::new(payload)).await
    }

    /// Publishes a ready-made message to `topic`. It inherits the input's correlation id and
    /// trace context unless it has its own.
    pub async fn publish_message(&self, topic: &str, mut message: Message) -> Result<()> {
        carry(&self.carried, &mut message);
        self.route.publisher.publish(topic, message).await
    }

    /// Whether the router is shutting down (intake stopped). Long handlers may wind down early.
    pub fn is_shutting_down(&self) -> bool {
        self.route.shutdown.is_cancelled()
    }

    /// Resolves when the router starts shutting down.
    pub async fn shutting_down(&self) {
        self.route.shutdown.cancelled().await
    }
}

impl fmt::Debug for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("handler", &self.handler_name())
            .field("topic", &self.topic())
            .field("attempt", &self.attempt)
            .field("message_id", &self.message_id)
            .finish()
    }
}
