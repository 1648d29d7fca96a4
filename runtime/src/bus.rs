//! [`CommandBus`] and [`EventBus`]: send a command, publish an event, typed.
//!
//! Each goes to its type's topic, encoded with the bus's codec (JSON unless set), with its
//! [`MessageType`](crate::MessageType) in metadata. Taken as a handler argument, a bus publishes
//! through the handler's publisher and codec at once (before the input is acked) and carries the
//! input's correlation id and trace context, as [`Ctx`] does; built with `new` it publishes
//! through the publisher it is given.
//!
//! ```
//! use millstream::prelude::*;
//! use millstream::{CommandBus, EventBus};
//!
//! #[derive(Serialize, Deserialize)]
//! #[millstream::command]
//! struct PlaceOrder { id: u64 }
//!
//! #[derive(Serialize, Deserialize)]
//! #[millstream::event]
//! struct OrderPlaced { id: u64 }
//!
//! #[millstream::command_handler]
//! async fn place(order: PlaceOrder, events: EventBus) -> millstream::Result<()> {
//!     events.publish(&OrderPlaced { id: order.id }).await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
//! let pubsub = MemoryPubSub::new();
//! CommandBus::new(pubsub.clone()).send(&PlaceOrder { id: 7 }).await?; // to "commands.PlaceOrder"
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::codec::{Codec, DynEncoder, JsonCodec};
use crate::context::MessageCx;
use crate::error::Result;
use crate::extract::{carry, Ctx, FromMessage};
use crate::keys::CORRELATION_ID;
use crate::message::{Message, Metadata};
use crate::pubsub::Publisher;
use crate::state::StateMap;
use crate::topic::{typed_message, Command, Event, Topic};

/// What both buses hold: where to publish, how to encode, and what every message carries.
#[derive(Clone)]
struct Sender {
    publisher: Arc<dyn Publisher>,
    encoder: Arc<dyn DynEncoder>,
    carried: Metadata,
}

impl Sender {
    fn new(publisher: Arc<dyn Publisher>) -> Self {
        Sender { publisher, encoder: Arc::new(JsonCodec), carried: Metadata::new() }
    }

    fn in_handler(message: &Message, cx: MessageCx<'_>) -> Self {
        let (route, carried) = Ctx::new(message, cx).into_parts();
        Sender { publisher: route.publisher.clone(), encoder: route.encoder.clone(), carried }
    }

    async fn send<T: Topic + Serialize + Sync>(&self, value: &T) -> Result<()> {
        let mut message = typed_message(self.encoder.encode_dyn(value)?, T::MESSAGE_TYPE);
        carry(&self.carried, &mut message);
        self.publisher.publish(T::NAME, message).await
    }
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("content_type", &self.encoder.content_type_dyn())
            .field("correlation_id", &self.carried.get(CORRELATION_ID))
            .finish_non_exhaustive()
    }
}

macro_rules! bus_setters {
    () => {
        /// Encodes with `codec` instead of JSON.
        pub fn codec(mut self, codec: impl Codec) -> Self {
            self.0.encoder = Arc::new(codec);
            self
        }

        /// Every message sent carries this correlation id (unless the message has one).
        pub fn correlation_id(mut self, id: impl Into<Box<str>>) -> Self {
            self.0.carried.insert_static(CORRELATION_ID, id);
            self
        }
    };
}

/// Sends commands: each to its type's topic, handled by that command's one
/// `#[millstream::command_handler]`.
///
/// Build one with [`CommandBus::new`], or take one as a handler argument (it then sends through
/// the handler's publisher and codec and carries the input's correlation id).
#[derive(Clone, Debug)]
pub struct CommandBus(Sender);

impl CommandBus {
    /// A bus sending through `publisher`, as JSON.
    pub fn new(publisher: impl Publisher) -> Self {
        CommandBus(Sender::new(Arc::new(publisher)))
    }

    /// A bus sending through a shared publisher, as JSON.
    pub fn from_arc(publisher: Arc<dyn Publisher>) -> Self {
        CommandBus(Sender::new(publisher))
    }

    bus_setters!();

    /// Sends `command` to its topic; returns once the backend has it.
    pub async fn send<C: Command + Serialize + Sync>(&self, command: &C) -> Result<()> {
        self.0.send(command).await
    }
}

/// Publishes events: each to its type's topic, for every `#[millstream::event_handler]` of it.
///
/// Build one with [`EventBus::new`], or take one as a handler argument (it then publishes through
/// the handler's publisher and codec and carries the input's correlation id).
#[derive(Clone, Debug)]
pub struct EventBus(Sender);

impl EventBus {
    /// A bus publishing through `publisher`, as JSON.
    pub fn new(publisher: impl Publisher) -> Self {
        EventBus(Sender::new(Arc::new(publisher)))
    }

    /// A bus publishing through a shared publisher, as JSON.
    pub fn from_arc(publisher: Arc<dyn Publisher>) -> Self {
        EventBus(Sender::new(publisher))
    }

    bus_setters!();

    /// Publishes `event` to its topic; returns once the backend has it.
    pub async fn publish<E: Event + Serialize + Sync>(&self, event: &E) -> Result<()> {
        self.0.send(event).await
    }
}

impl FromMessage for CommandBus {
    type Prepared = ();

    fn prepare(_: &StateMap) -> Result<()> {
        Ok(())
    }

    fn from_message(_: &(), message: &Message, cx: MessageCx<'_>) -> Result<Self> {
        Ok(CommandBus(Sender::in_handler(message, cx)))
    }
}

impl FromMessage for EventBus {
    type Prepared = ();

    fn prepare(_: &StateMap) -> Result<()> {
        Ok(())
    }

    fn from_message(_: &(), message: &Message, cx: MessageCx<'_>) -> Result<Self> {
        Ok(EventBus(Sender::in_handler(message, cx)))
    }
}
