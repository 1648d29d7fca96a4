//! The metadata keys millstream itself reads and writes, in one place.
//!
//! They sit on the ground floor beside [`Metadata`](crate::Metadata): the middleware that writes a
//! key and the extractors, router and tests that read it all import it from here.
//! [`Message`](crate::Message) has accessors for the common ones
//! ([`correlation_id`](crate::Message::correlation_id), [`traceparent`](crate::Message::traceparent),
//! [`poison_reason`](crate::Message::poison_reason)).

/// The correlation id: one id that follows a message and everything it causes (set by the
/// [`CorrelationId`](crate::middleware::CorrelationId) layer).
pub const CORRELATION_ID: &str = "correlation_id";

/// The W3C trace context header (set by the [`TraceContext`](crate::middleware::TraceContext) layer).
pub const TRACEPARENT: &str = "traceparent";

/// The message's key ([`Message::with_key`](crate::Message::with_key)), on backends without a
/// key of their own.
pub const KEY: &str = "millstream.key";

/// When a message is to be delivered, in Unix milliseconds ([`Message::deliver_at`](crate::Message::deliver_at)):
/// a [`Scheduler`](crate::delay::Scheduler) keeps it in its delay store until then. The
/// scheduler's relay removes the key when it publishes the message.
pub const DELIVER_AT: &str = "millstream.deliver_at";

/// Keys of a message the router requeued through a delay store
/// ([`RouterConfig::requeue_after`](crate::RouterConfig::requeue_after)): a copy published to
/// the topic it came from, for one consumer group.
pub mod requeue {
    /// The consumer group the copy is for; the others ack it unhandled.
    pub const GROUP: &str = "millstream.requeue.group";
    /// The attempts made before it was requeued: the next delivery is attempt `n + 1`.
    pub const ATTEMPTS: &str = "millstream.requeue.attempts";
    /// The id of the message it copies. The copy travels under an id of its own (brokers that
    /// drop a message id they have seen, as JetStream does within its duplicate window, would
    /// drop it), and the handler gets it back under this one.
    pub const ID: &str = "millstream.requeue.id";
}

/// Keys of a message on a retry topic ([`Route::retry_topics`](crate::Route::retry_topics)),
/// beside [`requeue::ATTEMPTS`] and [`requeue::ID`] (the attempts so far, the original id).
pub mod retry {
    /// When the retry topic's handler may take it, in Unix milliseconds.
    pub const DUE: &str = "millstream.retry.due";
    /// Why the last attempt failed.
    pub const REASON: &str = "millstream.retry.reason";
}

/// Keys every message of a command or event type carries ([`MessageType`](crate::MessageType)),
/// written when it is published and read by the handlers of a topic several types share.
pub mod message {
    /// `command` or `event`.
    pub const KIND: &str = "millstream.kind";
    /// The type's name (`OrderPlaced`).
    pub const TYPE: &str = "millstream.type";
    /// The type's schema version (`1`).
    pub const VERSION: &str = "millstream.version";
}

/// Keys of request–reply ([`Requester`](crate::Requester)): a request says where its replies
/// go, a reply says which request it answers and, when the handler failed, why.
pub mod reply {
    /// On a request: the topic its replies go to. The router sends whatever the handler returns
    /// there instead of to the values' own topics (an empty reply when it returns nothing).
    pub const TO: &str = "millstream.reply_to";
    /// On a reply: the id of the request it answers.
    pub const FOR: &str = "millstream.reply_for";
    /// On an error reply: the handler's error.
    pub const ERROR: &str = "millstream.reply_error";
    /// On an error reply: the error's kind (`Handler`, `Decode`, ...).
    pub const ERROR_KIND: &str = "millstream.reply_error_kind";
}

/// Keys set on a message sent to a poison (dead-letter) topic, by the router's own poison path
/// and by [`PoisonQueue`](crate::middleware::PoisonQueue).
pub mod poison {
    /// Why the message was poisoned (the error text).
    pub const REASON: &str = "millstream.poison.reason";
    /// The handler that failed.
    pub const HANDLER: &str = "millstream.poison.handler";
    /// The topic the message was read from.
    pub const TOPIC: &str = "millstream.poison.topic";
    /// The delivery attempt that failed.
    pub const ATTEMPT: &str = "millstream.poison.attempt";
    /// The error kind (`Decode`, `Handler`, ...).
    pub const KIND: &str = "millstream.poison.kind";
    /// When the message was poisoned, in Unix milliseconds.
    pub const TIME: &str = "millstream.poison.time";
}
