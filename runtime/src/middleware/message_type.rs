//! [`MessageTypeFilter`]: a handler of one command or event type, on a topic several types share.

use futures_core::future::BoxFuture;

use super::chain::{Middleware, Next};
use crate::error::{Error, ErrorKind};
use crate::handler::{HandlerResult, Outputs};
use crate::message::Message;
use crate::topic::MessageType;

/// Runs the handler only for messages of one [`MessageType`]; `#[millstream::command_handler]`
/// and `#[millstream::event_handler]` put it outermost in their own chain.
///
/// By the type name in the message's metadata (`millstream.type`):
/// - another type's message is acked without running the handler (several event types may
///   share one topic, each handler in its own group reading them all); logged at debug level;
/// - a message of the type with a newer version than the handler's (`millstream.version`), or a
///   version that is not a number, fails permanently (it goes to the poison queue with the
///   reason): the handler cannot know what a newer schema means;
/// - a message that names no type (published by another program) is handled: its payload decides.
#[derive(Clone, Copy, Debug)]
pub struct MessageTypeFilter {
    expected: MessageType,
}

impl MessageTypeFilter {
    /// Lets through messages of `expected` (and of no stated type).
    pub fn new(expected: MessageType) -> Self {
        MessageTypeFilter { expected }
    }

    /// What the filter decides for `message`: run the handler (`Ok(true)`), skip it
    /// (`Ok(false)`), or fail.
    fn admits(&self, message: &Message) -> Result<bool, Error> {
        let expected = &self.expected;
        match MessageType::name_of(message) {
            None => return Ok(true),
            Some(name) if name != expected.name => return Ok(false),
            Some(_) => {}
        }
        match MessageType::version_of(message) {
            None => Ok(true),
            Some(Ok(version)) if version <= expected.version => Ok(true),
            Some(Ok(version)) => Err(Error::new(
                ErrorKind::Decode,
                format!(
                    "{} version {version} is newer than this handler's (version {}): deploy a handler \
                     that knows version {version}",
                    expected.name, expected.version
                ),
            )),
            Some(Err(text)) => Err(Error::new(
                ErrorKind::Decode,
                format!("{} has a version that is not a number: {text:?}", expected.name),
            )),
        }
    }
}

impl Middleware for MessageTypeFilter {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        match self.admits(&message) {
            Ok(true) => next.run(message),
            Ok(false) => {
                tracing::debug!(
                    expected = self.expected.name,
                    found = MessageType::name_of(&message),
                    id = %message.id(),
                    "message of another type: acked without running the handler"
                );
                Box::pin(std::future::ready(Ok(Outputs::new())))
            }
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }
}
