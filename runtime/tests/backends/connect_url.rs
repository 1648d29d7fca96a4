//! `millstream::connect(url)` against each real server: the URL picks the backend, and a message
//! goes through it (for Kafka, whose topics are created by an admin call, connecting only).
#![cfg(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql",
    feature = "nats",
    feature = "amqp",
    feature = "redis",
    feature = "mqtt",
    feature = "kafka"
))]
// Helpers serve only some backends: a build with a few of them leaves the rest unused.
#![cfg_attr(
    not(all(
        feature = "postgres",
        feature = "mysql",
        feature = "nats",
        feature = "redis",
        feature = "mqtt"
    )),
    allow(dead_code, unused_imports)
)]

use std::time::Duration;

use millstream::{connect, Message, Publisher, SubscribeOptions, Subscriber};

const WAIT: Duration = Duration::from_secs(60);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Connects to `url`, then subscribes in a group, publishes one message and receives it.
async fn round_trip(url: &str, scheme: &str) {
    let backend = tokio::time::timeout(WAIT, connect(url)).await.expect("in time").expect("connect");
    assert_eq!(backend.scheme(), scheme);
    let id = uuid::Uuid::now_v7().simple().to_string();
    let topic = format!("connect-url.{scheme}.{}", &id[id.len() - 12..]);
    let mut sub = backend.subscribe(&topic, SubscribeOptions::group("g")).await.expect("subscribe");
    backend.publish(&topic, Message::new(id.clone())).await.expect("publish");
    let delivery = tokio::time::timeout(WAIT, sub.next()).await.expect("in time").expect("open").expect("ok");
    assert_eq!(delivery.message().payload(), id.as_bytes());
    delivery.ack().await.expect("ack");
    drop(sub);
    Publisher::close(&backend).await.expect("close");
    Subscriber::close(&backend).await.expect("close");
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_url() {
    let dir = std::env::temp_dir().join(format!("millstream-connect-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    round_trip(&format!("sqlite://{}", dir.join("app.db").display()), "sqlite").await;
    assert!(dir.join("app.db").exists(), "the database file is created");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `?partitions=N` in a SQL URL: the topic is recorded with that count, and a URL with another
/// count (or none) is refused on it; the rest of the query still reaches the driver.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_url_says_how_many_partitions() {
    let base = env_or("MILLSTREAM_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
    let separator = if base.contains('?') { '&' } else { '?' };
    round_trip(&format!("{base}{separator}partitions=4&application_name=millstream-test"), "postgres").await;
    let four = connect(&format!("{base}{separator}partitions=4")).await.expect("connect");
    let plain = connect(&base).await.expect("connect");
    let topic = format!("connect-url.partitions.{}", uuid::Uuid::now_v7().simple());
    four.publish(&topic, Message::new("x")).await.expect("publish with 4 partitions");
    let error = plain.publish(&topic, Message::new("y")).await.expect_err("one partition is refused");
    assert_eq!(error.kind(), millstream::ErrorKind::Config, "{error}");
    let error = connect(&format!("{base}{separator}partitions=many")).await.expect_err("not a number");
    assert_eq!(error.kind(), millstream::ErrorKind::Config, "{error}");
    Subscriber::delete_topic(&four, &topic).await.expect("delete");
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_url() {
    round_trip(&env_or("MILLSTREAM_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"), "postgres")
        .await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_url() {
    round_trip(&env_or("MILLSTREAM_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"), "mysql").await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_url() {
    let _lock = crate::support::nats::shared().await;
    round_trip(&env_or("MILLSTREAM_NATS_URL", "nats://127.0.0.1:4222"), "nats").await;
}

#[cfg(feature = "amqp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_url() {
    let _lock = crate::support::amqp::shared().await;
    round_trip(&crate::support::amqp::url(), "amqp").await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_url() {
    round_trip(&env_or("MILLSTREAM_REDIS_URL", "redis://127.0.0.1:6379"), "redis").await;
}

#[cfg(feature = "mqtt")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_url() {
    round_trip(&env_or("MILLSTREAM_MQTT_URL", "mqtt://127.0.0.1:1883"), "mqtt").await;
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_url() {
    let url = format!("kafka://{}", crate::support::kafka::shared_brokers());
    let backend = tokio::time::timeout(WAIT, connect(&url)).await.expect("in time").expect("connect");
    assert_eq!(backend.scheme(), "kafka");
    Publisher::close(&backend).await.expect("close");
}
