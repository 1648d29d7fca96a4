//! [`Features`]: what a backend guarantees. The conformance suite reads it to choose its cases,
//! and the router reads it when a handler starts, to refuse what the backend cannot honour (a
//! redelivery cap where attempts are not counted, key order where the backend keeps none).

/// How a backend settles deliveries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Settlement {
    /// Each delivery on its own, in any order (SQL rows, JetStream messages, AMQP tags).
    #[default]
    Individual,
    /// A position at a time: settling one settles every earlier one (Kafka offsets, MQTT's
    /// in-order PUBACKs). Such a backend turns the router's out-of-order acks into safe commits
    /// with a [`Watermark`](super::watermark::Watermark), so it never commits past a delivery still
    /// being handled.
    Cumulative,
}

/// How exact a delivery's [`attempt`](super::Delivery::attempt) is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Attempts {
    /// The broker counts deliveries: attempt 3 is the third delivery.
    #[default]
    Exact,
    /// At least this many: a redelivery is marked (AMQP's redelivered flag, MQTT's DUP) but not
    /// counted, or counts are lost across a restart.
    AtLeast,
    /// Not known: every delivery says attempt 1 (Kafka keeps no count).
    Unknown,
}

/// What a backend guarantees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Features {
    /// The backend's name, for messages (`"memory"`, `"sqlite"`, `"nats"`, ...).
    pub backend: &'static str,
    /// Subscriptions in one group share messages.
    pub consumer_groups: bool,
    /// Messages survive a restart of the process or server.
    pub persistent: bool,
    /// Messages of a topic (or partition) are delivered in publish order.
    pub ordered: bool,
    /// A subscriber that arrives late can read messages published before it subscribed.
    pub history: bool,
    /// A nacked message is delivered again.
    pub redelivery: bool,
    /// Order ([`ordered`](Features::ordered)) holds only while a group has a single subscription:
    /// with several, each gets its share in order, but nothing orders one subscription's deliveries
    /// against another's.
    pub ordered_single_subscriber: bool,
    /// A group gets its next message only once the one before is settled, so a nacked (or expired)
    /// message comes back before anything published after it. Implies [`ordered`](Features::ordered).
    pub strict_order: bool,
    /// An acked message is never delivered to its group again, and in a run without failures (no
    /// nack, no expired ack deadline, no crash, no server restart) every message reaches each group
    /// exactly once. The conformance suite then fails on any duplicate instead of only reporting it.
    pub exactly_once: bool,
    /// [`Acker::nack_after`](super::Acker::nack_after) waits the given delay before redelivering.
    pub nack_delay: bool,
    /// The largest payload (bytes) a publish accepts, when the backend has a limit (a broker's
    /// maximum message size, a database's largest row or packet); `None`: no limit of its own. A
    /// larger payload is refused before it is sent, with a permanent
    /// [`ErrorKind::Config`](crate::error::ErrorKind::Config) error naming the size and the limit (see
    /// [`check_size`](super::check_size)).
    pub max_payload: Option<usize>,
    /// How deliveries are settled.
    pub settlement: Settlement,
    /// Messages with the same [key](crate::Message::with_key) are delivered in publish order,
    /// even with several subscriptions in a group (a key stays on one partition or consumer).
    pub ordered_per_key: bool,
    /// How exact [`Delivery::attempt`](super::Delivery::attempt) is. A
    /// [`RedeliveryCap`](crate::middleware::RedeliveryCap) or
    /// [`PoisonQueue::after_deliveries`](crate::middleware::PoisonQueue::after_deliveries) on a
    /// backend whose count is [`Attempts::Unknown`] is refused when the handler is added.
    pub attempts: Attempts,
    /// [`Settle::Reject`](super::Settle::Reject) sends the message to a dead letter of the
    /// broker's own (AMQP's dead-letter exchange); otherwise a rejected message is dropped, and the
    /// router publishes it to its poison topic first.
    pub dead_letter: bool,
    /// [`Settle::Release`](super::Settle::Release) gives a delivery back without counting an
    /// attempt.
    pub release_uncounted: bool,
    /// A publish to a topic that nothing receives (no subscription, no group: the message would
    /// be dropped) fails instead (AMQP's `mandatory`). Such a backend keeps no
    /// [`history`](Features::history) for topics without groups.
    pub refuses_unroutable: bool,
}
