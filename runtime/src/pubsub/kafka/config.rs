//! [`KafkaConfig`]: how a [`KafkaPubSub`](super::KafkaPubSub) reaches its brokers and behaves.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// How a nacked (or released) delivery comes back: Kafka has no per-message nack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Redelivery {
    /// Seek the partition back to the nacked offset (after the nack's delay, the partition paused
    /// meanwhile): the message comes back first, and everything after it on its partition comes
    /// again behind it. Order per partition (so per key) is kept; the partition waits for the
    /// nacked message. The default.
    #[default]
    Seek,
    /// Publish a copy to the end of the same topic, with the same key and an attempt count in the
    /// `millstream-attempt` header, then settle the original: the partition goes on at once, and
    /// the copy comes back after what was published before it (order against later messages of
    /// its key is lost). The copy is confirmed before the original is settled, so a crash in
    /// between gives a duplicate, never a loss.
    Republish,
}

/// The partitions and replication of topics that [`KafkaConfig::create_topics`] creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// Partitions of a new topic.
    pub partitions: i32,
    /// Replicas of each partition.
    pub replication: i32,
}

/// librdkafka properties whose values are never printed.
fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "jaas", "oauthbearer.config", "key.pem", "certificate.pem", "token"]
        .iter()
        .any(|part| name.contains(part))
}

/// Settings of a [`KafkaPubSub`](super::KafkaPubSub).
///
/// Any librdkafka property can be passed through [`property`](KafkaConfig::property) (SASL and
/// SSL settings, `compression.type`, `linger.ms`, ...); a property set there wins over the value
/// millstream would choose. `Debug` shows passwords, secrets and keys as `"***"`.
#[derive(Clone)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// `host:port` of one or more brokers, comma-separated (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// The client id the brokers see (`client.id`). Default `millstream`.
    pub client_id: String,
    /// When set, a topic published to or subscribed to that does not exist is created with these
    /// partitions and replication (by the admin API, once per topic and process). Default `None`:
    /// a missing topic is an error, as topics are usually created by operators (see
    /// [`KafkaPubSub::create_topic`](super::KafkaPubSub::create_topic)).
    pub create_topics: Option<TopicSpec>,
    /// How nacks and releases come back. Default [`Redelivery::Seek`].
    pub redelivery: Redelivery,
    /// How long a publish may take, librdkafka's retries included (`message.timeout.ms`); a
    /// publish that runs out of time fails, and the message may have been stored. Default 30 s.
    pub publish_timeout: Duration,
    /// How long a subscription waits for the group to give it its partitions. Default 60 s.
    pub assign_timeout: Duration,
    /// How often acknowledged offsets are committed; they are also committed when partitions are
    /// revoked and when a subscription closes. Default 1 s.
    pub commit_interval: Duration,
    /// Deliveries one subscription may have unsettled before its partitions are paused, when
    /// [`SubscribeOptions::max_in_flight`](crate::SubscribeOptions::max_in_flight) does not say.
    /// Default 1024.
    pub max_in_flight: usize,
    /// The largest message a publish accepts, payload, key and headers counted, in bytes
    /// (librdkafka's `message.max.bytes`, which must not exceed the broker's limit). Default
    /// 1 000 000 (Kafka's default).
    pub max_message_bytes: usize,
    /// Every other librdkafka property, in the order set.
    properties: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Defaults for the brokers at `brokers` (`host:port[,host:port...]`).
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            client_id: "millstream".to_owned(),
            create_topics: None,
            redelivery: Redelivery::Seek,
            publish_timeout: Duration::from_secs(30),
            assign_timeout: Duration::from_secs(60),
            commit_interval: Duration::from_secs(1),
            max_in_flight: 1024,
            max_message_bytes: 1_000_000,
            properties: Vec::new(),
        }
    }

    /// Settings from a URL: `kafka://host:port[,host:port...]` (the port defaults to 9092).
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = |why: &str| Error::new(ErrorKind::Config, format!("bad Kafka URL {url:?}: {why}"));
        let rest = url.strip_prefix("kafka://").ok_or_else(|| bad("expected kafka://host:port"))?;
        let hosts = rest.trim_end_matches('/');
        if hosts.is_empty() || hosts.contains(['/', '?', '@']) {
            return Err(bad("expected kafka://host:port[,host:port...]"));
        }
        let brokers: Vec<String> = hosts
            .split(',')
            .map(|host| if host.contains(':') { host.to_owned() } else { format!("{host}:9092") })
            .collect();
        Ok(Self::new(brokers.join(",")))
    }

    /// Sets the client id.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// Creates missing topics with `partitions` partitions and `replication` replicas.
    pub fn create_topics(mut self, partitions: i32, replication: i32) -> Self {
        self.create_topics =
            Some(TopicSpec { partitions: partitions.max(1), replication: replication.max(1) });
        self
    }

    /// Sets how nacks come back.
    pub fn redelivery(mut self, redelivery: Redelivery) -> Self {
        self.redelivery = redelivery;
        self
    }

    /// Sets how long a publish may take.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets how long a subscription waits for its partitions.
    pub fn assign_timeout(mut self, timeout: Duration) -> Self {
        self.assign_timeout = timeout;
        self
    }

    /// Sets how often acknowledged offsets are committed.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Sets the unsettled deliveries a subscription may have before it pauses.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// Sets the largest message a publish accepts.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Sets any librdkafka property (`security.protocol`, `sasl.username`, `compression.type`,
    /// ...), for producers and consumers alike. It wins over millstream's own choice.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.properties.retain(|(n, _)| *n != name);
        self.properties.push((name, value.into()));
        self
    }

    /// The properties set with [`property`](KafkaConfig::property).
    pub fn properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.properties.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// A client's librdkafka configuration: what every client shares, then `ours` (the client's
    /// own), then the user's properties, which win.
    pub(super) fn client_config(&self, ours: &[(&str, &str)]) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("message.max.bytes", self.max_message_bytes.max(1000).to_string())
            .set("log_level", "4")
            // Topics are created on purpose (`create_topics`, `create_topic`), never as a side
            // effect of a metadata request (librdkafka's producers ask for that by default).
            .set("allow.auto.create.topics", "false");
        for (name, value) in ours {
            config.set(*name, *value);
        }
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        config
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Props<'a>(&'a [(String, String)]);
        impl fmt::Debug for Props<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(self.0.iter().map(|(n, v)| (n, if is_secret(n) { "***" } else { v.as_str() })))
                    .finish()
            }
        }
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("create_topics", &self.create_topics)
            .field("redelivery", &self.redelivery)
            .field("publish_timeout", &self.publish_timeout)
            .field("assign_timeout", &self.assign_timeout)
            .field("commit_interval", &self.commit_interval)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("properties", &Props(&self.properties))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let config = KafkaConfig::new("b:9092")
            .property("sasl.username", "svc")
            .property("sasl.password", "hunter2")
            .property("ssl.key.password", "k3y")
            .property("sasl.oauthbearer.client.secret", "s3cr3t");
        let shown = format!("{config:?}");
        assert!(shown.contains("svc"), "{shown}");
        for secret in ["hunter2", "k3y", "s3cr3t"] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
    }

    #[test]
    fn urls() {
        assert_eq!(KafkaConfig::from_url("kafka://a,b:9093").unwrap().brokers, "a:9092,b:9093");
        assert!(KafkaConfig::from_url("nats://a").is_err());
        assert!(KafkaConfig::from_url("kafka://").is_err());
    }

    #[test]
    fn a_property_set_twice_keeps_the_last_value() {
        let config = KafkaConfig::new("b").property("linger.ms", "1").property("linger.ms", "9");
        assert_eq!(config.properties().collect::<Vec<_>>(), [("linger.ms", "9")]);
    }
}
