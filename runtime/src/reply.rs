//! Replies to requests: what the router (and a [`PoisonQueue`](crate::middleware::PoisonQueue))
//! send back to a [`Requester`](crate::Requester). Below both, beside the message.

use crate::error::Error;
use crate::keys::reply;
use crate::message::{Message, MessageId};

/// Where the replies to `message` go, if it is a request.
#[inline]
pub(crate) fn reply_topic(message: &Message) -> Option<Box<str>> {
    let metadata = message.metadata();
    if metadata.is_empty() {
        return None;
    }
    metadata.get(reply::TO).map(Box::from)
}

/// `output` as the reply to the request `request`.
pub(crate) fn as_reply(request: MessageId, mut output: Message) -> Message {
    output.metadata_mut().insert_static(reply::FOR, request.to_boxed_str());
    output
}

/// The reply saying that the request `request` failed with `error`.
pub(crate) fn error_reply(request: MessageId, error: &Error) -> Message {
    Message::new(Vec::new())
        .with_static_header(reply::FOR, request.to_boxed_str())
        .with_static_header(reply::ERROR, error.message())
        .with_static_header(reply::ERROR_KIND, format!("{:?}", error.kind()))
}
