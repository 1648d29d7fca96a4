//! What `#[millstream::command]`, `#[millstream::event]`, `#[millstream::command_handler]` and
//! `#[millstream::event_handler]` expand to, beside what `#[millstream::handler]` does.

use bytes::Bytes;
use serde::Serialize;

use crate::codec::Codec;
use crate::error::Error;
use crate::middleware::MessageTypeFilter;
use crate::router::Route;
use crate::topic::{Command, Event, MessageKind, MessageType, Topic};
use serde::de::DeserializeOwned;

/// The identity a `#[command]` or `#[event]` type carries.
pub const fn message_type(
    kind: MessageKind,
    name: &'static str,
    version: u32,
    version_text: &'static str,
) -> MessageType {
    MessageType { kind, name, version, version_text }
}

/// A command handler's route: the handler runs only for messages of its command type, older
/// versions upcast with `codec` (the handler's).
pub fn command_route<C: Command, K: Codec + Clone>(route: Route, codec: K) -> Route {
    match C::MESSAGE_TYPE {
        Some(expected) => route.layer(
            MessageTypeFilter::new(expected)
                .upcaster(move |version, payload| C::upcast(&codec, version, payload)),
        ),
        None => route,
    }
}

/// An event handler's route: the handler runs only for messages of its event type, older
/// versions upcast with `codec` (the handler's).
pub fn event_route<E: Event, K: Codec + Clone>(route: Route, codec: K) -> Route {
    match E::MESSAGE_TYPE {
        Some(expected) => route.layer(
            MessageTypeFilter::new(expected)
                .upcaster(move |version, payload| E::upcast(&codec, version, payload)),
        ),
        None => route,
    }
}

/// Implemented once per command type by its `#[millstream::command_handler]`: a second handler
/// of the same command in the same crate is a second impl, which rustc refuses ("conflicting
/// implementations of trait `CommandHasOneHandler`"), pointing at both handlers.
pub trait CommandHasOneHandler {}

/// An older version's type converts into the current one's.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be upcast to `{New}`",
    label = "no `From<{Self}>` for `{New}`",
    note = "an upcaster turns an older version into the current one: implement `From<{Self}> for {New}`"
)]
pub trait UpcastsTo<New> {
    /// The conversion.
    fn upcast(self) -> New;
}

#[diagnostic::do_not_recommend]
impl<Old: Into<New>, New> UpcastsTo<New> for Old {
    fn upcast(self) -> New {
        self.into()
    }
}

/// An older version's type decodes from a payload.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be decoded as an older version",
    label = "not `Deserialize`",
    note = "an upcaster decodes the older version's payload as `{Self}`: derive `Deserialize` for it (`#[derive(Deserialize)]`)"
)]
pub trait OlderVersion: DeserializeOwned {}

#[diagnostic::do_not_recommend]
impl<T: DeserializeOwned> OlderVersion for T {}

/// The upcaster of one older version: decodes `payload` as `Old`, converts, encodes as `New`.
pub fn upcast<Old, New, K>(codec: &K, payload: &[u8]) -> Result<Bytes, Error>
where
    Old: OlderVersion + UpcastsTo<New>,
    New: Serialize,
    K: Codec,
{
    let old: Old = codec.decode(payload)?;
    codec.encode(&old.upcast())
}

/// A saga handler's route: when its message type is a command or an event, the handler runs only
/// for messages of that type, older versions upcast with `codec` (the handler's).
pub fn saga_route<P: Topic, K: Codec + Clone>(route: Route, codec: K) -> Route {
    match P::MESSAGE_TYPE {
        Some(expected) => route.layer(
            MessageTypeFilter::new(expected)
                .upcaster(move |version, payload| P::upcast(&codec, version, payload)),
        ),
        None => route,
    }
}
