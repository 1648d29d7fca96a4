//! Stores that backends offer to the layers above them, each kept in memory, in the SQL backend's
//! database or in Redis: the [`DedupStore`] behind the
//! [`Deduplicator`](crate::middleware::Deduplicator), the [`AttemptStore`] behind
//! [`CountAttempts`](crate::middleware::CountAttempts), the [`DelayStore`] behind the
//! [`Scheduler`](crate::delay::Scheduler) and the [`SagaStore`] behind [`Sagas`](crate::Sagas).
//!
//! The traits sit on the same floor as the pub/sub traits, below the backends that implement
//! them and the middleware that uses them.

use std::time::{Duration, SystemTime};

use crate::message::Message;

use crate::op::OpFuture;

/// Remembers keys for a while, to deduplicate across processes when shared. The `conformance`
/// feature's `check_dedup_store` checks a store against this contract.
///
/// A duplicate insert does not extend a key's window.
pub trait DedupStore: Send + Sync + 'static {
    /// Records `key` for `ttl` and says whether it was new (`true`) or seen within its window.
    fn insert_if_new<'a>(&'a self, key: &'a str, ttl: Duration) -> OpFuture<'a, bool>;

    /// Forgets `key` (the handler failed, so a redelivery must go through).
    fn remove<'a>(&'a self, key: &'a str) -> OpFuture<'a>;
}

/// Counts the deliveries of messages, for the [`CountAttempts`](crate::middleware::CountAttempts)
/// layer on a backend that counts none, or only in one process
/// ([`Features::attempts`](crate::pubsub::Features::attempts)). Shared by several processes (in
/// the SQL backend's database or in Redis), it counts the deliveries of all of them, and survives
/// their restarts: a message that crashes its consumer still reaches a cap. The `conformance`
/// feature's `check_attempt_store` checks a store against this contract.
pub trait AttemptStore: Send + Sync + 'static {
    /// Counts one more delivery of `key` and returns its deliveries, this one included (1 for a
    /// key the store does not hold). The count is kept for `ttl` after this delivery; a key
    /// delivered again later starts at 1. Concurrent records of one key each count.
    fn record<'a>(&'a self, key: &'a str, ttl: Duration) -> OpFuture<'a, u32>;

    /// Forgets `key` (its message was settled for good: acked, or sent to a poison topic).
    fn forget<'a>(&'a self, key: &'a str) -> OpFuture<'a>;
}

/// A message a [`DelayStore`] keeps until it is due.
#[derive(Clone, Debug)]
pub struct DelayedMessage {
    /// The topic it is published to when due.
    pub topic: String,
    /// The message, as published then.
    pub message: Message,
    /// When it is due, in Unix milliseconds.
    pub due_ms: u64,
}

/// A due message [`DelayStore::take_due`] handed to a relay: `seq` names it in the store (for
/// [`DelayStore::done`]).
#[derive(Clone, Debug)]
pub struct TakenMessage {
    /// The message's number in its store: increasing in the order messages were scheduled.
    pub seq: u64,
    /// The message.
    pub delayed: DelayedMessage,
}

/// Keeps delayed messages until they are due, for a [`Scheduler`](crate::delay::Scheduler)'s
/// relay to publish: in memory ([`MemoryDelayStore`](crate::delay::MemoryDelayStore)), or
/// durably, surviving restarts and shared by processes, in the SQL backend's database
/// ([`SqlDelayStore`](crate::pubsub::sql::SqlDelayStore)) or in Redis
/// ([`RedisDelayStore`](crate::pubsub::redis::RedisDelayStore)). The `conformance` feature's
/// `check_delay_store` checks a store against this contract.
///
/// Messages are kept per `scope` (a name for the publisher they go to; one store can serve
/// several schedulers publishing to different backends). A message is handed out by
/// [`take_due`](Self::take_due) with a lease: one that is not [`done`](Self::done) when its lease
/// ends is due again (a relay that died between publishing and `done` publishes it twice: at
/// least once).
pub trait DelayStore: Send + Sync + 'static {
    /// Keeps `messages` for `scope` until each is due; all or none.
    fn schedule<'a>(&'a self, scope: &'a str, messages: Vec<DelayedMessage>) -> OpFuture<'a>;

    /// Takes up to `limit` messages of `scope` due at `now_ms` (their due time, or the end of an
    /// earlier lease, at or before it), earliest due first and in the order they were scheduled
    /// among equal due times, each leased for `lease`.
    fn take_due<'a>(
        &'a self,
        scope: &'a str,
        now_ms: u64,
        limit: usize,
        lease: Duration,
    ) -> OpFuture<'a, Vec<TakenMessage>>;

    /// Forgets taken messages that were published (`seqs` from [`TakenMessage::seq`]).
    fn done<'a>(&'a self, scope: &'a str, seqs: &'a [u64]) -> OpFuture<'a>;

    /// When the next message of `scope` is due (a leased one at its lease's end), in Unix
    /// milliseconds; `None` when the scope holds nothing. The relay sleeps until then (or its
    /// poll interval, for messages other processes schedule).
    fn next_due<'a>(&'a self, scope: &'a str) -> OpFuture<'a, Option<u64>>;

    /// How many messages `scope` holds, taken ones included.
    fn count<'a>(&'a self, scope: &'a str) -> OpFuture<'a, u64>;
}

/// Where a saga instance lives: the saga's name (its `#[millstream::saga]` type) and the
/// instance's id (the correlation id of the messages that drive it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SagaKey<'a> {
    /// The saga's name.
    pub saga: &'a str,
    /// The instance's id.
    pub id: &'a str,
}

/// How a saga instance ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SagaOutcome {
    /// It reached its goal.
    Completed,
    /// It failed, for this reason; its compensating commands were sent.
    Failed(String),
}

/// What a [`SagaStore`] holds of one saga instance, as read before a message is handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SagaLoad {
    /// No instance with this key, running or finished.
    Absent,
    /// A running instance.
    Running {
        /// Its state, as JSON.
        state: String,
        /// Its version: how many messages it has taken; a commit must name it.
        version: u64,
        /// It has already taken the message being handled (a redelivery).
        seen: bool,
    },
    /// A finished instance (while the store remembers it).
    Finished(SagaOutcome),
}

/// A message a saga commit publishes, to its topic.
#[derive(Clone, Debug)]
pub struct SagaMessage {
    /// Where it goes.
    pub topic: String,
    /// The message.
    pub message: Message,
}

/// A message a saga delivers to itself (or anyone) once `due`: a timeout.
#[derive(Clone, Debug)]
pub struct SagaDeadline {
    /// When it is published.
    pub due: SystemTime,
    /// Where it goes.
    pub topic: String,
    /// The message.
    pub message: Message,
}

/// What a saga handler changed, written by [`SagaStore::commit`] all at once or not at all.
#[derive(Debug)]
pub struct SagaCommit<'a> {
    /// The instance.
    pub key: SagaKey<'a>,
    /// The id of the message handled: recorded, so that its redelivery is not taken twice.
    pub message_id: &'a str,
    /// The version loaded (`None`: a new instance). The commit fails as a conflict if the store
    /// holds another one.
    pub version: Option<u64>,
    /// The new state, as JSON.
    pub state: String,
    /// Messages to publish, in order.
    pub send: Vec<SagaMessage>,
    /// Compensating messages to keep, in the order they were added; published newest first if
    /// the saga fails.
    pub compensations: Vec<SagaMessage>,
    /// Timeouts to keep until due.
    pub deadlines: Vec<SagaDeadline>,
    /// Set when the instance ends with this commit: its kept compensations (those of earlier
    /// commits and this one's) are published, newest first, if it failed; they and its pending
    /// deadlines are dropped either way.
    pub finish: Option<SagaOutcome>,
}

/// Keeps saga instances: their state, what each has taken, the compensations and timeouts they
/// hold, and how the finished ones ended. The
/// [`SqlSagaStore`](crate::pubsub::sql::SqlSagaStore) writes a commit and publishes its messages
/// in one transaction of the SQL backend's database (an outbox).
pub trait SagaStore: Send + Sync + 'static {
    /// Reads the instance at `key`, and whether it has already taken `message_id`.
    fn load<'a>(&'a self, key: SagaKey<'a>, message_id: &'a str) -> OpFuture<'a, SagaLoad>;

    /// Writes `commit` and publishes its messages, all or nothing. `Ok(false)`: a conflict (the
    /// instance is at another version, or already took the message), nothing written.
    fn commit<'a>(&'a self, commit: SagaCommit<'a>) -> OpFuture<'a, bool>;

    /// Starts delivering the timeouts the store holds (a background task, once per store), when
    /// an app whose saga handlers use the store starts. Called from within a tokio runtime.
    fn start(&self) {}
}
