//! [`RedisConfig`]: the settings of a [`RedisPubSub`](super::RedisPubSub), the [`Trim`] policy and
//! the per-subscription [`RedisConsumer`] option.

use std::time::Duration;

/// How a [`RedisPubSub`](super::RedisPubSub) trims the streams it publishes to. Trimming never
/// removes an entry some consumer group has not read and acknowledged: the cut is lowered to the
/// slowest group's position (its oldest pending entry, or the entry after the last one it was
/// given). Subscriptions without a group are not protected: they may miss what a trim removed
/// before they read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trim {
    /// Keep about this many newest entries (`XTRIM MINID` at the id of the oldest one kept).
    MaxLen(u64),
    /// Keep entries younger than this (by their stream id's time, on the server's clock).
    MaxAge(Duration),
}

/// Settings of a [`RedisPubSub`](super::RedisPubSub).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Put in front of a topic to name its stream key. Default `millstream:`.
    pub key_prefix: String,
    /// The first part of consumer names (see [`RedisConsumer`]); `None`: the host name and the
    /// executable's name, `<host>/<exe>`, the same every time the process starts on that host.
    pub consumer_name: Option<String>,
    /// How long a delivery may stay unsettled (and a dead consumer's entry pending) before any
    /// subscription of its group claims it (`XAUTOCLAIM` min-idle-time): the ack deadline.
    /// Default 30 s. Every subscription of a group should use the same.
    pub claim_idle: Duration,
    /// How often each group subscription looks for entries to claim. Default 1 s.
    pub claim_interval: Duration,
    /// How long one blocking read waits for new entries (`BLOCK`). It runs on the subscription's
    /// own connection; a subscription that ends lets its last read finish. Default 2 s.
    pub block: Duration,
    /// Entries read (or claimed) per command (`COUNT`). Default 100.
    pub batch: usize,
    /// Deliveries a subscription holds unsettled at most, unless
    /// [`SubscribeOptions::max_in_flight`](crate::SubscribeOptions::max_in_flight) says. Default 256.
    pub max_in_flight: usize,
    /// The largest payload a publish accepts (bytes). Default 16 MiB; never more than the server's
    /// `proto-max-bulk-len`.
    pub max_payload: usize,
    /// How streams are trimmed; `None` (the default) never trims.
    pub trim: Option<Trim>,
    /// How often the streams published to are trimmed, when [`trim`](RedisConfig::trim) is set.
    /// Default 5 s.
    pub trim_interval: Duration,
    /// Where a rejected entry goes: the stream of the topic `<topic><suffix>` (a topic like any
    /// other, so it can be subscribed to). Default `Some(".dead")`; `None` drops rejected entries
    /// (the router then publishes to its poison topic first).
    pub dead_letter_suffix: Option<String>,
    /// Consumers of a group that hold no pending entry and have not read for this long are
    /// deleted (by any subscription of the group, checking about every quarter of it), so that
    /// names of hosts long gone do not pile up; `None` keeps them. A consumer that holds entries
    /// is never deleted. Default 24 h.
    pub forget_consumers_after: Option<Duration>,
    /// How long a command waits for its reply (blocking reads wait [`block`](RedisConfig::block)
    /// more). Default 5 s.
    pub response_timeout: Duration,
    /// The longest pause between reconnection attempts (they start at 100 ms and double).
    /// Default 5 s.
    pub max_backoff: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            key_prefix: "millstream:".to_owned(),
            consumer_name: None,
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(1),
            block: Duration::from_secs(2),
            batch: 100,
            max_in_flight: 256,
            max_payload: 16 * 1024 * 1024,
            trim: None,
            trim_interval: Duration::from_secs(5),
            dead_letter_suffix: Some(".dead".to_owned()),
            forget_consumers_after: Some(Duration::from_secs(24 * 3600)),
            response_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RedisConfig {
    /// Sets [`key_prefix`](RedisConfig::key_prefix).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets [`consumer_name`](RedisConfig::consumer_name).
    pub fn consumer_name(mut self, name: impl Into<String>) -> Self {
        self.consumer_name = Some(name.into());
        self
    }

    /// Sets [`claim_idle`](RedisConfig::claim_idle) (at least 1 ms).
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle.max(Duration::from_millis(1));
        self
    }

    /// Sets [`claim_interval`](RedisConfig::claim_interval) (at least 10 ms).
    pub fn claim_interval(mut self, interval: Duration) -> Self {
        self.claim_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Sets [`block`](RedisConfig::block) (at least 1 ms).
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// Sets [`batch`](RedisConfig::batch) (at least 1).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Sets [`max_in_flight`](RedisConfig::max_in_flight) (at least 1).
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// Sets [`max_payload`](RedisConfig::max_payload).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Sets [`trim`](RedisConfig::trim).
    pub fn trim(mut self, trim: Trim) -> Self {
        self.trim = Some(trim);
        self
    }

    /// Sets [`trim_interval`](RedisConfig::trim_interval) (at least 10 ms).
    pub fn trim_interval(mut self, interval: Duration) -> Self {
        self.trim_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Sets [`dead_letter_suffix`](RedisConfig::dead_letter_suffix).
    pub fn dead_letter_suffix(mut self, suffix: Option<String>) -> Self {
        self.dead_letter_suffix = suffix;
        self
    }

    /// Sets [`forget_consumers_after`](RedisConfig::forget_consumers_after).
    pub fn forget_consumers_after(mut self, idle: Option<Duration>) -> Self {
        self.forget_consumers_after = idle;
        self
    }

    /// Sets [`response_timeout`](RedisConfig::response_timeout).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Sets [`max_backoff`](RedisConfig::max_backoff).
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff.max(Duration::from_millis(100));
        self
    }
}

/// A subscription's consumer name, given through
/// [`SubscribeOptions::extension`](crate::SubscribeOptions::extension); it replaces
/// [`RedisConfig::consumer_name`] for that subscription.
///
/// The consumer is named `<name>/<n>`, where `n` is the lowest number not used by another live
/// subscription of this process to the same stream and group (0 for the first). A process that
/// restarts and subscribes again gets the same names, so each subscription reads its own pending
/// entries (what it had read but not settled before the restart) before anything new. Two
/// processes that would pick the same names (two replicas with one host name) must be given
/// different ones. Consumers that hold nothing and have been idle for
/// [`RedisConfig::forget_consumers_after`] are deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConsumer(pub String);

/// The default first part of consumer names: `<host>/<executable>`.
pub(super) fn default_consumer_base() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    let exe = std::env::current_exe()
        .ok()
        .and_then(|path| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "millstream".to_owned());
    format!("{host}/{exe}")
}
