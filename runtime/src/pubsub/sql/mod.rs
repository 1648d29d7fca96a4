//! [`SqlPubSub`]: one durable backend over sqlx for SQLite (`sqlite` feature, embedded),
//! PostgreSQL (`postgres`) and MySQL / MariaDB (`mysql`).
//!
//! # Model
//! Three tables (two more for [partitions](#partitions); names prefixed by
//! [`SqlConfig::table_prefix`], default `millstream_`), created on first use:
//! - `topics(topic, last_seq)`: one row per topic, holding its last sequence number. A publish
//!   reserves its numbers by updating this row, which stays locked until the publishing
//!   transaction commits; so numbers are dense per topic and *become visible in order*, and a
//!   reader that has seen `n` will never later find a smaller number appear (the classic lost-row
//!   race of "read everything above my offset" over auto-increment ids cannot happen).
//! - `messages(topic, seq, id, metadata, payload, created_ms)`: the log. Rows are never updated.
//!   MySQL adds `size` (the payload's length; added to tables made before it, whose older rows
//!   are measured with `LENGTH(payload)`): its `LENGTH(payload)` reads the whole blob, where
//!   SQLite and PostgreSQL read a length stored beside it.
//! - `groups(topic, grp, acked, head_attempts, owner, lease_until, not_before)`: one row per
//!   consumer group: everything up to `acked` is done; `owner` holds a lease on the group until
//!   `lease_until` (the ack deadline).
//!
//! # Delivery
//! A group is consumed **in strict order**: the lease holder reads a batch after `acked` (at most
//! [`SqlConfig::batch_size`] messages and [`SqlConfig::batch_bytes`] of payload, or one larger
//! message on its own) and delivers it one message at a time; the next one is handed out only
//! once the previous is settled. An ack moves `acked` forward (guarded on the
//! previous value and the lease, so an acked message is never delivered to the group again) and
//! renews the lease. A nack releases the lease and keeps the group from being claimed before the
//! nack's delay, so the nacked message is the next one delivered, to whichever subscription of
//! the group claims first. A consumer that dies (or hangs past [`SqlConfig::ack_deadline`]) loses its
//! lease and another subscription takes over from `acked`: at-least-once, in order.
//! [`Delivery::attempt`](crate::pubsub::Delivery::attempt) counts the head message's deliveries in the group row; after an expired
//! lease it may count one delivery that did not happen (never one less).
//! Several subscriptions of one group share it: one holds the lease at a time, the others stand by
//! (order is kept across all of them).
//!
//! # Partitions
//! With [`SqlConfig::partitions`] `n > 1`, a topic is `n` such logs, stored as the topics
//! `{topic}#0` … `{topic}#{n-1}`: a message goes to the partition of its key (FNV-1a of
//! [`Message::key`](crate::Message::key)), or without one to the next in turn (a batch to one).
//! Each partition is a strictly ordered group of its own, with its own lease; a named group's
//! live subscriptions (the `members` table) divide the partitions among themselves, so a group
//! spreads across processes and order holds per key. Two more tables serve this:
//! `partitions(topic, parts)`, each partitioned topic's count (checked on first use), and
//! `members(topic, grp, owner, alive_until)`.
//!
//! A named group that does not exist yet starts at the beginning of the topic (late groups get the
//! history); a subscription without a group gets a private group starting after the topic's last
//! message, deleted when the subscription ends.
//!
//! Subscriptions poll ([`SqlConfig::poll_interval`]) while there is nothing to read; a publish
//! through any `SqlPubSub` of the same process wakes them at once.
//!
//! # The outbox
//! [`SqlPubSub::publish_in`] publishes on the caller's own connection, inside the caller's
//! transaction: the messages become visible exactly when (and only if) the caller's transaction
//! commits. Until then the topic's row stays locked, so other publishers to the same topic wait.
//!
//! # Clocks
//! Leases and nack delays use the publishing / consuming process's wall clock (milliseconds since
//! the Unix epoch): processes sharing one database should have synchronised clocks.
//!
//! # Sizes
//! A publish refuses a payload larger than the database takes in one row
//! ([`Features::max_payload`](crate::pubsub::Features::max_payload)): SQLite's 1 000 000 000
//! bytes (`SQLITE_MAX_LENGTH`), PostgreSQL's 1 GiB, or MySQL's `max_allowed_packet` (read from
//! the server), each less 64 KiB for the rest of the row. A publish of many messages is written
//! in INSERTs of at most [`SqlConfig::batch_bytes`] (and within MySQL's packet).
//!
//! Messages are kept (there is no retention yet): delete old rows of `messages` below every
//! group's `acked` yourself if the table grows too large.
//!
//! # Files
//! Each file imports only files above it in this list:
//! - `config`: [`SqlConfig`];
//! - `db`: the [`Dialect`] and pool, what the database's errors mean, the clock;
//! - `queries`: the SQL text, per dialect and table prefix;
//! - `stored`: a message as a row, written and read back;
//! - `ops`: the statements, instantiated per database, and `dispatch!`, which picks a pool's;
//! - `pubsub`: [`SqlPubSub`] itself: opening, the schema, topics, the state both halves share;
//! - `publisher`, `outbox` ([`SqlPubSub::publish_in`]) and `subscription` (leases, batches,
//!   settling): the halves;
//! - `keyed`: a table of keys that expire, and `dedup` ([`SqlDedupStore`]) and `attempts`
//!   ([`SqlAttemptStore`]) on it: the middleware's stores in the same database; `delay`
//!   ([`SqlDelayStore`]) and `saga` ([`SqlSagaStore`]): the scheduler's and the sagas' stores.

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
compile_error!("the `sql` feature is internal: enable `sqlite`, `postgres` or `mysql`");

mod attempts;
mod config;
mod db;
mod dedup;
mod delay;
mod inbox;
mod keyed;
mod ops;
mod outbox;
mod publisher;
mod pubsub;
mod queries;
mod saga;
mod stored;
mod subscription;
#[cfg(test)]
mod tests;

pub use self::attempts::SqlAttemptStore;
pub use self::config::SqlConfig;
pub use self::db::Dialect;
pub use self::dedup::SqlDedupStore;
pub use self::delay::SqlDelayStore;
pub use self::inbox::{InboxDatabase, InboxKey, SqlInbox};
pub use self::outbox::OutboxConnection;
pub use self::pubsub::SqlPubSub;
#[cfg(feature = "sqlite")]
pub use self::pubsub::SqlitePubSub;
pub use self::saga::SqlSagaStore;
/// The `sqlx` this backend is built on, for the outbox's transactions without a second copy of
/// it in your build: `millstream::pubsub::sql::sqlx`.
pub use sqlx;
