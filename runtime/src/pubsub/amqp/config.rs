//! [`AmqpConfig`]: where the server is, how deliveries are prefetched and retried, and which
//! topology the backend declares.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::topology::{Preset, Topology};

/// An AMQP URI (`amqp://user:password@host:port/vhost`, `amqps://` for TLS) whose password is
/// never shown: `Debug` and `Display` print `amqp://user:***@host:port/vhost`.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUri(String);

impl AmqpUri {
    /// Wraps a URI.
    pub fn new(uri: impl Into<String>) -> Self {
        AmqpUri(uri.into())
    }

    /// The URI with its secret, for the client only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// The URI with the password (if any) replaced by `***`.
    pub fn redacted(&self) -> String {
        let uri = &self.0;
        let Some(scheme_end) = uri.find("://").map(|i| i + 3) else { return uri.clone() };
        let rest = &uri[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                let user = userinfo.split(':').next().unwrap_or("");
                let shown = if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
                format!("{}{shown}{}", &uri[..scheme_end], &rest[at..])
            }
            None => uri.clone(),
        }
    }
}

impl fmt::Debug for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUri({:?})", self.redacted())
    }
}

impl fmt::Display for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Settings of an [`AmqpPubSub`](super::AmqpPubSub).
#[derive(Clone)]
#[non_exhaustive]
pub struct AmqpConfig {
    /// Where the server is, with credentials and TLS (`amqps://`). Redacted in `Debug`.
    pub uri: AmqpUri,
    /// What is declared for publishing and subscribing. Default: [`Preset::groups`] on the
    /// exchange `millstream`.
    pub topology: Arc<dyn Topology>,
    /// Deliveries a subscription may hold unsettled (the channel's prefetch) when its
    /// [`SubscribeOptions::max_in_flight`](crate::SubscribeOptions::max_in_flight) says nothing.
    /// Default 100.
    pub prefetch: u16,
    /// The delay classes of `nack_after`: a delayed nack goes to the retry queue of the smallest
    /// class at least as long as the delay asked for (the largest when none is). Default 1 s,
    /// 5 s, 30 s, 2 min, 10 min.
    pub retry_delays: Vec<Duration>,
    /// The largest payload a publish accepts. RabbitMQ refuses messages over its
    /// `max_message_size` (128 MiB by default) by closing the channel; keep this at or below it.
    /// Default 128 MiB less 64 KiB kept for properties and headers.
    pub max_payload: usize,
    /// The connection's name, shown by the management tools (`rabbitmqctl list_connections
    /// client_properties`). Default `millstream`.
    pub connection_name: String,
    /// How long connecting may take, and each step of attaching a subscription (its
    /// declarations, channel and consumer). A step that takes longer drops the connection,
    /// which is made again. Default 10 s.
    pub connect_timeout: Duration,
    /// How long a publish waits, from its first frame to the broker's last confirm (for a
    /// batch, all of them), before it fails with [`ErrorKind::Timeout`](crate::ErrorKind) and
    /// drops the connection: a connection that died without a close (no FIN, no heartbeat yet)
    /// would otherwise hold every publish until lapin noticed. Default 30 s.
    pub publish_timeout: Duration,
    /// The longest wait between two reconnection attempts (the wait doubles from 100 ms up to
    /// this). Default 5 s.
    pub max_backoff: Duration,
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("uri", &self.uri)
            .field("topology", &self.topology)
            .field("prefetch", &self.prefetch)
            .field("retry_delays", &self.retry_delays)
            .field("max_payload", &self.max_payload)
            .field("connection_name", &self.connection_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

impl AmqpConfig {
    /// Settings for the server at `uri`, everything else at its default.
    pub fn new(uri: impl Into<String>) -> Self {
        AmqpConfig {
            uri: AmqpUri::new(uri),
            topology: Arc::new(Preset::groups("millstream")),
            prefetch: 100,
            retry_delays: [1, 5, 30, 120, 600].map(Duration::from_secs).to_vec(),
            max_payload: 128 * 1024 * 1024 - 64 * 1024,
            connection_name: "millstream".to_owned(),
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(30),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// Sets [`AmqpConfig::topology`] (a [`Preset`] or a topology of your own).
    pub fn topology(mut self, topology: impl Topology) -> Self {
        self.topology = Arc::new(topology);
        self
    }

    /// Sets [`AmqpConfig::prefetch`] (at least 1).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Sets [`AmqpConfig::retry_delays`] (empty: delayed nacks wait in the process instead).
    pub fn retry_delays(mut self, mut delays: Vec<Duration>) -> Self {
        delays.retain(|d| !d.is_zero());
        delays.sort();
        delays.dedup();
        self.retry_delays = delays;
        self
    }

    /// Sets [`AmqpConfig::max_payload`].
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Sets [`AmqpConfig::connection_name`].
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// Sets [`AmqpConfig::connect_timeout`] (at least 100 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// Sets [`AmqpConfig::publish_timeout`] (at least 100 ms).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// Sets [`AmqpConfig::max_backoff`].
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max.max(Duration::from_millis(100));
        self
    }

    /// The retry class for a nack delayed by `delay`: the smallest at least as long, else the
    /// largest; `None` without classes.
    pub(crate) fn retry_class(&self, delay: Duration) -> Option<Duration> {
        self.retry_delays.iter().copied().find(|class| *class >= delay).or(self.retry_delays.last().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let uri = AmqpUri::new("amqps://alice:s3cr%40t@rabbit.example:5671/prod?heartbeat=10");
        assert_eq!(uri.redacted(), "amqps://alice:***@rabbit.example:5671/prod?heartbeat=10");
        assert!(!format!("{uri:?}").contains("s3cr"));
        let config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f");
        assert!(!format!("{config:?}").contains("guest@"), "{config:?}");
        assert_eq!(AmqpUri::new("amqp://127.0.0.1").redacted(), "amqp://127.0.0.1");
        assert_eq!(AmqpUri::new("amqp://bob@h/").redacted(), "amqp://bob@h/");
    }

    #[test]
    fn delays_round_up_to_a_class() {
        let config = AmqpConfig::new("amqp://h");
        assert_eq!(config.retry_class(Duration::from_millis(800)), Some(Duration::from_secs(1)));
        assert_eq!(config.retry_class(Duration::from_secs(6)), Some(Duration::from_secs(30)));
        assert_eq!(config.retry_class(Duration::from_secs(3600)), Some(Duration::from_secs(600)));
        assert_eq!(config.retry_delays(Vec::new()).retry_class(Duration::from_secs(1)), None);
    }
}
