//! What `#[millstream::command]`, `#[millstream::event]`, `#[millstream::command_handler]` and
//! `#[millstream::event_handler]` expand to, beside what `#[millstream::handler]` does.

use crate::middleware::MessageTypeFilter;
use crate::router::Route;
use crate::topic::{Command, Event, MessageKind, MessageType};

/// The identity a `#[command]` or `#[event]` type carries.
pub const fn message_type(
    kind: MessageKind,
    name: &'static str,
    version: u32,
    version_text: &'static str,
) -> MessageType {
    MessageType { kind, name, version, version_text }
}

/// A command handler's route: the handler runs only for messages of its command type.
pub fn command_route<C: Command>(route: Route) -> Route {
    match C::MESSAGE_TYPE {
        Some(expected) => route.layer(MessageTypeFilter::new(expected)),
        None => route,
    }
}

/// An event handler's route: the handler runs only for messages of its event type.
pub fn event_route<E: Event>(route: Route) -> Route {
    match E::MESSAGE_TYPE {
        Some(expected) => route.layer(MessageTypeFilter::new(expected)),
        None => route,
    }
}

/// Implemented once per command type by its `#[millstream::command_handler]`: a second handler
/// of the same command in the same crate is a second impl, which rustc refuses ("conflicting
/// implementations of trait `CommandHasOneHandler`"), pointing at both handlers.
pub trait CommandHasOneHandler {}
