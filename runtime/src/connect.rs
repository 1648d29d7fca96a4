//! [`connect`]: a backend chosen by its URL, so that one binary runs on the in-memory backend in
//! its tests and on a broker in production, the URL coming from configuration.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
//! let url = std::env::var("PUBSUB_URL").unwrap_or_else(|_| "memory://".to_owned());
//! let pubsub = millstream::connect(&url).await?;
//! let app = millstream::App::new().pubsub(pubsub);
//! # let _ = app; Ok(()) }
//! ```
//!
//! | URL | backend | feature |
//! |---|---|---|
//! | `memory://` | [`MemoryPubSub`](crate::pubsub::memory::MemoryPubSub) | `memory` (default) |
//! | `sqlite:path/app.db`, `sqlite://path/app.db` | [`SqlPubSub`](crate::pubsub::sql::SqlPubSub) on SQLite (created if missing) | `sqlite` |
//! | `postgres://user@host/db` | `SqlPubSub` on PostgreSQL | `postgres` |
//! | `mysql://user@host/db`, `mariadb://...` | `SqlPubSub` on MySQL / MariaDB | `mysql` |
//! | `nats://host:4222` | [`NatsPubSub`](crate::pubsub::nats::NatsPubSub) (JetStream) | `nats` |
//! | `amqp://user:pass@host:5672/vhost`, `amqps://...` | [`AmqpPubSub`](crate::pubsub::amqp::AmqpPubSub) | `amqp` |
//! | `redis://host:6379`, `rediss://...` | [`RedisPubSub`](crate::pubsub::redis::RedisPubSub) | `redis` |
//! | `mqtt://host:1883`, `mqtts://...` | [`MqttPubSub`](crate::pubsub::mqtt::MqttPubSub) (its session named after the host) | `mqtt` |
//! | `kafka://host:9092[,host:9092]` | [`KafkaPubSub`](crate::pubsub::kafka::KafkaPubSub) | `kafka` |
//!
//! Every backend starts with its default settings; build it yourself for others. A SQL URL may
//! say how many partitions its topics have (`postgres://host/db?partitions=12`:
//! [`SqlConfig::partitions`](crate::pubsub::sql::SqlConfig::partitions)), so that a binary or the
//! `millstream` command line reads a partitioned topic; the rest of the query goes to the driver. A URL whose
//! backend is not compiled in fails with an error naming the feature to enable; an unknown scheme
//! with the list above. Errors never show the URL's password.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::pubsub::{Features, OpFuture, PubSub, Publisher, SubscribeOptions, Subscriber, Subscription};

/// A backend chosen by [`connect`]: a pub/sub of any kind, cheap to clone.
#[derive(Clone)]
pub struct Backend {
    scheme: &'static str,
    inner: Arc<dyn PubSub>,
}

impl Backend {
    /// Wraps a pub/sub built by hand, under the name `scheme`.
    pub fn new(scheme: &'static str, pubsub: impl PubSub) -> Self {
        Backend { scheme, inner: Arc::new(pubsub) }
    }

    /// Which backend it is: the URL's scheme (`postgres`, `nats`, ...).
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend").field("scheme", &self.scheme).finish_non_exhaustive()
    }
}

impl Publisher for Backend {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        self.inner.publish(topic, message)
    }

    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> OpFuture<'a> {
        self.inner.publish_batch(topic, messages)
    }

    fn close(&self) -> OpFuture<'_> {
        Publisher::close(&*self.inner)
    }

    fn delays(&self) -> bool {
        self.inner.delays()
    }
}

impl Subscriber for Backend {
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription> {
        self.inner.subscribe(topic, options)
    }

    fn close(&self) -> OpFuture<'_> {
        Subscriber::close(&*self.inner)
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> OpFuture<'a> {
        self.inner.delete_topic(topic)
    }

    fn features(&self) -> Features {
        self.inner.features()
    }
}

/// The schemes, each with the feature that builds its backend.
const SCHEMES: &[(&str, &str)] = &[
    ("memory", "memory"),
    ("sqlite", "sqlite"),
    ("postgres", "postgres"),
    ("postgresql", "postgres"),
    ("mysql", "mysql"),
    ("mariadb", "mysql"),
    ("nats", "nats"),
    ("amqp", "amqp"),
    ("amqps", "amqp"),
    ("redis", "redis"),
    ("rediss", "redis"),
    ("mqtt", "mqtt"),
    ("mqtts", "mqtt"),
    ("kafka", "kafka"),
];

/// Connects to the backend `url` names (see the [module](self) for the URLs).
pub async fn connect(url: &str) -> Result<Backend> {
    let Some((scheme, _)) = url.split_once(':') else {
        return Err(config(format!(
            "{:?} names no backend: write a URL such as `nats://localhost:4222` or `memory://`",
            redacted(url)
        )));
    };
    let Some(&(scheme, feature)) = SCHEMES.iter().find(|(known, _)| known.eq_ignore_ascii_case(scheme))
    else {
        let known: Vec<String> = SCHEMES.iter().map(|(scheme, _)| format!("{scheme}:")).collect();
        return Err(config(format!("unknown backend `{scheme}:`; millstream knows {}", known.join(", "))));
    };
    let connected = open(scheme, url).await;
    match connected {
        Some(result) => result
            .map(|inner| Backend { scheme, inner })
            .map_err(|error| error.context(format!("connecting to {}", redacted(url)))),
        None => Err(config(format!(
            "`{scheme}:` URLs need millstream's `{feature}` feature: \
             `millstream = {{ version = \"{}\", features = [\"{feature}\"] }}`",
            env!("CARGO_PKG_VERSION")
        ))),
    }
}

/// The settings a SQL URL's query gives millstream (`partitions=N`), and the URL without them
/// (the rest of its query is the driver's).
#[cfg(feature = "sql")]
fn sql_settings(url: &str) -> Result<(String, crate::pubsub::sql::SqlConfig)> {
    let (base, query) = url.split_once('?').map_or((url, ""), |(base, query)| (base, query));
    let mut config = crate::pubsub::sql::SqlConfig::default();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("partitions", value)) => {
                config.partitions = value.parse().map_err(|_| {
                    Error::new(
                        ErrorKind::Config,
                        format!("`partitions={value}` in the URL: a number of partitions, 1 to 1024"),
                    )
                })?;
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    Ok((url, config))
}

/// The backend for `scheme`, or `None` when its feature is not compiled in.
#[allow(unused_variables, clippy::unused_async)]
async fn open(scheme: &str, url: &str) -> Option<Result<Arc<dyn PubSub>>> {
    fn shared(pubsub: impl PubSub) -> Arc<dyn PubSub> {
        Arc::new(pubsub)
    }
    Some(match scheme {
        #[cfg(feature = "memory")]
        "memory" => Ok(shared(crate::pubsub::memory::MemoryPubSub::new())),
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            use crate::pubsub::sql::SqlPubSub;
            // `sqlite://path` and `sqlite:path` name the same file.
            let path = url.split_once(':').map_or("", |(_, rest)| rest);
            let path = path.strip_prefix("//").unwrap_or(path);
            let path = path.split('?').next().unwrap_or(path);
            match sql_settings(url) {
                Ok((_, config)) => SqlPubSub::open_sqlite(path, config).await.map(shared),
                Err(error) => Err(error),
            }
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            use crate::pubsub::sql::SqlPubSub;
            match sql_settings(url) {
                Ok((url, config)) => SqlPubSub::connect(&url, config).await.map(shared),
                Err(error) => Err(error),
            }
        }
        #[cfg(feature = "mysql")]
        "mysql" | "mariadb" => {
            use crate::pubsub::sql::SqlPubSub;
            match sql_settings(url) {
                Ok((url, config)) => SqlPubSub::connect(&url, config).await.map(shared),
                Err(error) => Err(error),
            }
        }
        #[cfg(feature = "nats")]
        "nats" => {
            use crate::pubsub::nats::{NatsConfig, NatsPubSub};
            NatsPubSub::connect(url, NatsConfig::default()).await.map(shared)
        }
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" => {
            use crate::pubsub::amqp::{AmqpConfig, AmqpPubSub};
            AmqpPubSub::connect(AmqpConfig::new(url)).await.map(shared)
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            use crate::pubsub::redis::{RedisConfig, RedisPubSub};
            RedisPubSub::connect(url, RedisConfig::default()).await.map(shared)
        }
        #[cfg(feature = "mqtt")]
        "mqtt" | "mqtts" => {
            use crate::pubsub::mqtt::{MqttConfig, MqttPubSub};
            match MqttConfig::from_url(url, host_name()) {
                Ok(config) => MqttPubSub::connect(config).await.map(shared),
                Err(error) => Err(error),
            }
        }
        #[cfg(feature = "kafka")]
        "kafka" => {
            use crate::pubsub::kafka::{KafkaConfig, KafkaPubSub};
            match KafkaConfig::from_url(url) {
                Ok(config) => KafkaPubSub::connect(config).await.map(shared),
                Err(error) => Err(error),
            }
        }
        _ => return None,
    })
}

/// This machine's name, for an MQTT session (falls back to `millstream`).
#[cfg(feature = "mqtt")]
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "millstream".to_owned())
}

/// `url` without the password of its user-info part.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or("");
            let hidden = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

fn config(text: String) -> Error {
    Error::new(ErrorKind::Config, text).into_permanent()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redacted("postgres://alice:s3cret@db:5432/app"), "postgres://alice:***@db:5432/app");
        assert_eq!(redacted("amqp://guest@rabbit/%2f"), "amqp://guest@rabbit/%2f");
        assert_eq!(redacted("nats://localhost:4222"), "nats://localhost:4222");
        assert_eq!(redacted("redis://:pw@cache:6379/0"), "redis://:***@cache:6379/0");
    }

    #[tokio::test]
    async fn unknown_schemes_and_bare_addresses_are_explained() {
        let error = connect("rabbit://host").await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(
            error.message().contains("unknown backend `rabbit:`; millstream knows memory:, sqlite:"),
            "{error}"
        );
        let error = connect("localhost").await.unwrap_err();
        assert!(error.message().contains("names no backend"), "{error}");
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn memory_needs_nothing() {
        let backend = connect("memory://").await.unwrap();
        assert_eq!(backend.scheme(), "memory");
        let mut sub = backend.subscribe("connect.test", SubscribeOptions::default()).await.unwrap();
        backend.publish("connect.test", Message::new("hi")).await.unwrap();
        let delivery = sub.next().await.unwrap().unwrap();
        assert_eq!(&delivery.message().payload()[..], b"hi");
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn an_app_connects_by_url() {
        async fn echo(_: crate::Json<serde_json::Value>) {}
        let app = crate::App::new()
            .route(crate::Route::new("echo", "connect.app", echo))
            .connect("memory://")
            .await
            .unwrap();
        let router = app.start().await.unwrap();
        router.close().await.unwrap();
        let Err(error) = crate::App::new().connect("nope://").await else { panic!("an unknown scheme") };
        assert!(error.message().contains("unknown backend `nope:`"), "{error}");
    }

    #[cfg(not(feature = "kafka"))]
    #[tokio::test]
    async fn a_backend_not_compiled_in_names_its_feature() {
        let error = connect("kafka://broker:9092").await.unwrap_err();
        assert!(error.message().contains("`kafka:` URLs need millstream's `kafka` feature"), "{error}");
    }
}
