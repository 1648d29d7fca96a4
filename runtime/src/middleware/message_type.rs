//! [`MessageTypeFilter`]: a handler of one command or event type, on a topic several types share,
//! with older schema versions upcast or refused.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_core::future::BoxFuture;

use super::chain::{Middleware, Next};
use crate::error::{Error, ErrorKind};
use crate::handler::{HandlerResult, Outputs};
use crate::keys;
use crate::message::Message;
use crate::topic::MessageType;

/// Turns the payload of an older version into the current one's; `None`: no upcaster for it.
type Upcaster = Arc<dyn Fn(u32, &[u8]) -> Option<Result<Bytes, Error>> + Send + Sync>;

/// Runs the handler only for messages of one [`MessageType`]; `#[millstream::command_handler]`
/// and `#[millstream::event_handler]` put it outermost in their own chain, with the type's
/// upcasters.
///
/// By the type name in the message's metadata (`millstream.type`):
/// - another type's message is acked without running the handler (several event types may
///   share one topic, each handler in its own group reading them all); logged at debug level;
/// - a message of the type and its version (`millstream.version`) is handled;
/// - an older version is upcast when the type has an upcaster for it (the payload is replaced by
///   the current version's, the version metadata updated), and fails permanently otherwise (it
///   goes to the poison queue with the reason); so does a newer version (the handler cannot know
///   what a newer schema means) and a version that is not a number;
/// - a message that names no type (published by another program) is handled: its payload decides.
#[derive(Clone)]
pub struct MessageTypeFilter {
    expected: MessageType,
    upcaster: Option<Upcaster>,
}

/// What to do with a message.
enum Verdict {
    Run,
    Skip,
    Upcast(u32, Bytes),
}

impl MessageTypeFilter {
    /// Lets through messages of `expected` at its version (and of no stated type).
    pub fn new(expected: MessageType) -> Self {
        MessageTypeFilter { expected, upcaster: None }
    }

    /// Upcasts older versions with `upcaster`, which returns the current version's payload for
    /// an older version's, or `None` when it has no upcaster for that version.
    pub fn upcaster(
        mut self,
        upcaster: impl Fn(u32, &[u8]) -> Option<Result<Bytes, Error>> + Send + Sync + 'static,
    ) -> Self {
        self.upcaster = Some(Arc::new(upcaster));
        self
    }

    fn verdict(&self, message: &Message) -> Result<Verdict, Error> {
        let expected = &self.expected;
        match MessageType::name_of(message) {
            None => return Ok(Verdict::Run),
            Some(name) if name != expected.name => return Ok(Verdict::Skip),
            Some(_) => {}
        }
        let refuse = |text: String| Err(Error::new(ErrorKind::Decode, text));
        let version = match MessageType::version_of(message) {
            None => return Ok(Verdict::Run),
            Some(Ok(version)) => version,
            Some(Err(text)) => {
                return refuse(format!("{} has a version that is not a number: {text:?}", expected.name));
            }
        };
        if version == expected.version {
            return Ok(Verdict::Run);
        }
        if version > expected.version {
            return refuse(format!(
                "{} version {version} is newer than this handler's (version {}): deploy a handler that knows \
                 version {version}",
                expected.name, expected.version
            ));
        }
        match self.upcaster.as_ref().and_then(|upcast| upcast(version, message.payload())) {
            Some(Ok(payload)) => Ok(Verdict::Upcast(version, payload)),
            Some(Err(error)) => refuse(format!(
                "{} version {version} could not be upcast to version {}: {}",
                expected.name,
                expected.version,
                error.message()
            )),
            None => refuse(format!(
                "{} version {version} is older than this handler's (version {}) and {} has no upcaster from \
                 it: add `upcast({version} = OldType)` to its attribute",
                expected.name, expected.version, expected.name
            )),
        }
    }
}

impl fmt::Debug for MessageTypeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageTypeFilter")
            .field("expected", &self.expected)
            .field("upcasts", &self.upcaster.is_some())
            .finish()
    }
}

impl Middleware for MessageTypeFilter {
    fn call(&self, mut message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        match self.verdict(&message) {
            Ok(Verdict::Run) => next.run(message),
            Ok(Verdict::Upcast(from, payload)) => {
                tracing::debug!(
                    r#type = self.expected.name,
                    from,
                    to = self.expected.version,
                    id = %message.id(),
                    "upcast an older version"
                );
                message.set_payload(payload);
                message.metadata_mut().insert_static(keys::message::VERSION, self.expected.version_text);
                next.run(message)
            }
            Ok(Verdict::Skip) => {
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
