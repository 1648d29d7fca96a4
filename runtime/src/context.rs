//! What a running handler knows about itself ([`RouteInfo`], crate-private) and about the message
//! it is handling ([`MessageCx`]): read by extractors, middleware and the router alike, so it sits
//! below all three.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::codec::DynEncoder;
use crate::error::{Error, ErrorKind, Result};
use crate::pubsub::Publisher;

/// What a running handler knows about itself; shared by all its messages.
pub(crate) struct RouteInfo {
    pub(crate) name: Arc<str>,
    /// The handler this route runs: its name, the same for each of its retry topics' stages
    /// (whose `name`s differ). Read by the transactional inbox.
    #[cfg_attr(not(feature = "sql"), allow(dead_code))]
    pub(crate) handler: Arc<str>,
    /// The consumer group it reads in. Read by the transactional inbox.
    #[cfg_attr(not(feature = "sql"), allow(dead_code))]
    pub(crate) group: Arc<str>,
    pub(crate) topic: Arc<str>,
    pub(crate) publish: Option<Arc<str>>,
    pub(crate) publisher: Arc<dyn Publisher>,
    pub(crate) encoder: Arc<dyn DynEncoder>,
    pub(crate) shutdown: CancellationToken,
    /// A [`CorrelationId`](crate::middleware::CorrelationId) layer is in the chain: what the
    /// handler publishes carries the input's correlation id, its own id when it has none.
    pub(crate) correlates: bool,
}

impl RouteInfo {
    /// Where an output goes: a value with a topic of its own (a `#[topic]` type) goes there, any
    /// other to the handler's publish topic; the same rule as `Ctx::publish`.
    #[inline]
    pub(crate) fn output_topic(&self, own: Option<Cow<'static, str>>) -> Result<Cow<'_, str>> {
        match (own, &self.publish) {
            (Some(topic), _) => Ok(topic),
            (None, Some(topic)) => Ok(Cow::Borrowed(topic)),
            (None, None) => Err(Error::new(
                ErrorKind::Config,
                format!("handler `{}` produced a message but has no publish topic", self.name),
            )),
        }
    }
}

/// The context of one message being handled, passed to [`FromMessage::from_message`](crate::FromMessage::from_message).
#[derive(Clone, Copy)]
pub struct MessageCx<'a> {
    pub(crate) route: &'a Arc<RouteInfo>,
    pub(crate) attempt: u32,
}

impl MessageCx<'_> {
    /// The handler's name.
    pub fn handler_name(&self) -> &str {
        &self.route.name
    }

    /// The topic the message came from.
    pub fn topic(&self) -> &str {
        &self.route.topic
    }

    /// How many times this message has been delivered, this time included.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

impl fmt::Debug for MessageCx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageCx")
            .field("handler", &self.handler_name())
            .field("topic", &self.topic())
            .field("attempt", &self.attempt)
            .finish()
    }
}
