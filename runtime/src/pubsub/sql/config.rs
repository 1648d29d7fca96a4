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

    /// Sets [`SqlConfig::max_connections`].
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }
}
