//! Typed topics: a [`Topic`] type knows the name of the topic it travels on, and a
//! [`Publishable`] value can be sent by a handler (returned, or through [`Ctx`](crate::Ctx)).
//!
//! Both the extractors (a [`Json<T>`](crate::Json) is publishable) and the handlers read these, so
//! they live below both.
//!
//! Commands and events ([`Command`], [`Event`], `#[millstream::command]`, `#[millstream::event]`)
//! are topic types that also carry a [`MessageType`]: every message of one says in its metadata
//! what it is (kind, type name, version), so that a handler reading a topic shared by several
//! types can tell them apart.

use bytes::Bytes;
use serde::Serialize;

use crate::codec::Codec;
use crate::error::Error;
use crate::keys;
use crate::message::Message;

/// A type bound to a topic name: publishing a value of it goes to that topic, and a handler taking
/// it as payload subscribes to that topic. `#[millstream::topic("name")]` implements it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no topic of its own",
    label = "not a `#[millstream::topic]` type",
    note = "mark the type with `#[millstream::topic(\"name\")]`, or give the handler its topic: `#[millstream::handler(topic = \"name\")]`"
)]
pub trait Topic {
    /// The topic's name.
    const NAME: &'static str;

    /// What a command or event type is; `None` for a plain topic type.
    const MESSAGE_TYPE: Option<MessageType> = None;

    /// The payload of an older schema `version` of this command or event, turned into this
    /// version's (decoded as the older type, converted with its `From` impl, encoded again with
    /// `codec`); `None` when the type declares no upcaster for `version`.
    /// `#[millstream::event(version = 2, upcast(1 = OrderPlacedV1))]` writes it.
    fn upcast<C: Codec>(codec: &C, version: u32, payload: &[u8]) -> Option<Result<Bytes, Error>> {
        let _ = (codec, version, payload);
        None
    }
}

/// Whether a [`MessageType`] is a command or an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// An order to do something, with exactly one handler (`#[millstream::command]`).
    Command,
    /// Something that happened, with any number of handlers (`#[millstream::event]`).
    Event,
}

impl MessageKind {
    /// `"command"` or `"event"`: the value of [`keys::message::KIND`].
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageKind::Command => "command",
            MessageKind::Event => "event",
        }
    }
}

/// The identity of a command or event type, written into the metadata of each message of it
/// ([`keys::message`]): its kind, its name (the type's name unless the attribute gives another)
/// and its schema version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageType {
    /// Command or event.
    pub kind: MessageKind,
    /// The type's name as carried in metadata (`OrderPlaced`).
    pub name: &'static str,
    /// The schema version (1 unless the attribute says otherwise).
    pub version: u32,
    /// `version` as text, as metadata carries it (written by the macro, so that publishing
    /// formats nothing).
    pub version_text: &'static str,
}

impl MessageType {
    /// Writes the type's kind, name and version into `message`'s metadata.
    pub fn stamp(&self, message: &mut Message) {
        let metadata = message.metadata_mut();
        metadata.insert_static(keys::message::KIND, self.kind.as_str());
        metadata.insert_static(keys::message::TYPE, self.name);
        metadata.insert_static(keys::message::VERSION, self.version_text);
    }

    /// The type name a message says it carries, if it says.
    pub fn name_of(message: &Message) -> Option<&str> {
        message.metadata().get(keys::message::TYPE)
    }

    /// The version a message says it carries: `None` when it says nothing, `Some(Err(text))`
    /// when what it says is not a number.
    pub fn version_of(message: &Message) -> Option<Result<u32, &str>> {
        let text = message.metadata().get(keys::message::VERSION)?;
        Some(text.parse().map_err(|_| text))
    }
}

/// A new message with `payload`, stamped with `message_type` when there is one.
pub(crate) fn typed_message(payload: Bytes, message_type: Option<MessageType>) -> Message {
    let mut message = Message::new(payload);
    if let Some(message_type) = message_type {
        message_type.stamp(&mut message);
    }
    message
}

/// A command: a [`Topic`] type sent with a [`CommandBus`](crate::CommandBus) (or returned by a
/// handler) and handled by exactly one `#[millstream::command_handler]`.
/// `#[millstream::command]` implements it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command",
    label = "not a `#[millstream::command]` type",
    note = "mark the type with `#[millstream::command]`; for a type that is not a command, use `#[millstream::handler]`"
)]
pub trait Command: Topic {}

/// An event: a [`Topic`] type published with an [`EventBus`](crate::EventBus) (or returned by a
/// handler) and handled by any number of `#[millstream::event_handler]`s, each in its own group.
/// `#[millstream::event]` implements it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "not a `#[millstream::event]` type",
    note = "mark the type with `#[millstream::event]`; for a type that is not an event, use `#[millstream::handler]`"
)]
pub trait Event: Topic {}

/// A protobuf message of a command or event type is one too: same topic, type name and version.
#[cfg(feature = "protobuf")]
impl<T: Topic> Topic for crate::codec::Proto<T> {
    const NAME: &'static str = T::NAME;
    const MESSAGE_TYPE: Option<MessageType> = T::MESSAGE_TYPE;
}

#[cfg(feature = "protobuf")]
impl<T: Command> Command for crate::codec::Proto<T> {}

#[cfg(feature = "protobuf")]
impl<T: Event> Event for crate::codec::Proto<T> {}

/// A value a handler can return (or [`Ctx::publish`](crate::Ctx::publish)) to be published.
///
/// [`Topic`] types implement it and go to their own topic; [`Json<T>`](crate::Json) wraps any
/// `Serialize` type. For a plain struct published to the handler's publish topic, implement it
/// with an empty body: `impl millstream::Publishable for Invoice {}`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be published by a handler",
    label = "not publishable",
    note = "mark the type with `#[millstream::topic(\"name\")]`, add `impl millstream::Publishable for {Self} {{}}`, or return `Json<{Self}>`"
)]
pub trait Publishable: Serialize + Send + Sync + 'static {
    /// The type's own topic, if it has one.
    const TOPIC: Option<&'static str> = None;

    /// What the type is, if it is a command or an event (written into each message's metadata):
    /// [`Topic::MESSAGE_TYPE`] for a topic type. Named apart from it so that `T::MESSAGE_TYPE`
    /// is never ambiguous with both traits in scope.
    const IDENTITY: Option<MessageType> = None;
}

impl<T: Topic + Serialize + Send + Sync + 'static> Publishable for T {
    const TOPIC: Option<&'static str> = Some(T::NAME);
    const IDENTITY: Option<MessageType> = T::MESSAGE_TYPE;
}
