//! [`SqlConfig`]: the settings of a [`SqlPubSub`](super::SqlPubSub).

use std::time::Duration;

/// Settings of a [`SqlPubSub`](super::SqlPubSub).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqlConfig {
    /// Prefix of the three tables. Default `millstream_`. Letters, digits and `_` only.
    pub table_prefix: String,
    /// How often an idle subscription looks for new messages. Default 100 ms.
    pub poll_interval: Duration,
    /// How many messages a subscription reads at once at most. Default 100.
    pub batch_size: usize,
    /// How many payload bytes a subscription reads at once at most, and a publish sends in one
    /// statement: a batch ends before the message that would take it over this (a larger message
    /// is read, or written, on its own). Memory then stays bounded however large the messages
    /// are. Default 8 MiB.
    pub batch_bytes: usize,
    /// How long a subscription may hold a message unsettled before its group's lease expires and
    /// another subscription gets the message. Default 30 s.
    pub ack_deadline: Duration,
    /// Connections of pools this crate opens (not of pools you pass in). Default 5.
    pub max_connections: u32,
    /// This consumer's stable name: the same after a restart, different for each process that
    /// consumes the same groups at once. A subscription takes over at once the lease of a group
    /// held by an earlier process of the same name (a restart after a crash), instead of waiting
    /// out its ack deadline; subscriptions of one process never take each other's. Default: the
    /// host name (`HOSTNAME`, else `/etc/hostname`), right for one consumer process per host or
    /// container; set it (from an environment variable, say) when one host runs several. Letters,
    /// digits, `-`, `_`, `.` and `:` only, at most 100 characters.
    pub consumer: String,
    /// How long a delivery may be kept by heartbeats: while a delivery is unsettled its lease is
    /// renewed every third of the ack deadline, so a handler slower than the deadline keeps it;
    /// after this, renewals stop and the lease runs out (a hung handler cannot hold a group
    /// forever). Default 30 min.
    pub max_hold: Duration,
    /// How long messages are kept once every consumer group of their topic has acked them
    /// (counted from their publication); a topic without groups keeps them this long too. A
    /// background sweep of each open pub/sub deletes the rest every minute, in bounded batches
    /// that never block publishers ([`SqlPubSub::sweep`](super::SqlPubSub::sweep) runs one at
    /// once). A message some group has not acked is never deleted — so a group nobody consumes
    /// any more holds its topic's messages: delete it. `None`: keep every message. Default 7 days.
    pub retention: Option<Duration>,
    /// How long a publish goes on retrying while the database is away (a restart, a broken
    /// connection) or asks for another try (a deadlock). A commit whose outcome is unknown is
    /// checked before another try, so a message is stored once. Zero: one try (deadlocks are
    /// still retried a few times). Default 30 s.
    pub publish_retry_for: Duration,
    /// Partitions of every topic this pub/sub uses. Default 1: a topic is one strictly ordered
    /// log, and a consumer group is read by one subscription at a time (the others stand by).
    /// With `n > 1` each topic is `n` logs: a message goes to the partition of its
    /// [key](crate::Message::key) (a stable hash of it), or, without one, to the next partition
    /// in turn (a whole batch to one); a group's partitions are divided among its live
    /// subscriptions in every process, each partition read in order by one of them, so a group
    /// spreads across processes and order holds per key. A topic's partition count is recorded
    /// in the database on its first use: opening it with another count is refused with a
    /// [`Config`](crate::error::ErrorKind::Config) error. At most 1024.
    pub partitions: u32,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            table_prefix: "millstream_".to_owned(),
            poll_interval: Duration::from_millis(100),
            batch_size: 100,
            batch_bytes: 8 * 1024 * 1024,
            ack_deadline: Duration::from_secs(30),
            max_connections: 5,
            consumer: crate::pubsub::host_name(),
            max_hold: Duration::from_secs(30 * 60),
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            publish_retry_for: Duration::from_secs(30),
            partitions: 1,
        }
    }
}

impl SqlConfig {
    /// Sets [`SqlConfig::table_prefix`].
    pub fn table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.table_prefix = prefix.into();
        self
    }

    /// Sets [`SqlConfig::poll_interval`].
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets [`SqlConfig::batch_size`].
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// Sets [`SqlConfig::batch_bytes`] (at least 1).
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// Sets [`SqlConfig::ack_deadline`].
    pub fn ack_deadline(mut self, deadline: Duration) -> Self {
        self.ack_deadline = deadline;
        self
    }

    /// Sets [`SqlConfig::consumer`] (checked when the pub/sub is opened).
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = name.into();
        self
    }

    /// Sets [`SqlConfig::max_hold`].
    pub fn max_hold(mut self, hold: Duration) -> Self {
        self.max_hold = hold;
        self
    }

    /// Sets [`SqlConfig::retention`].
    pub fn retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Sets [`SqlConfig::publish_retry_for`].
    pub fn publish_retry_for(mut self, retry_for: Duration) -> Self {
        self.publish_retry_for = retry_for;
        self
    }

    /// Sets [`SqlConfig::partitions`] (from 1 to 1024; checked when the pub/sub is opened).
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets [`SqlConfig::max_connections`].
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }
}
