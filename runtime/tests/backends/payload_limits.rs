//! Message sizes beyond the conformance suite (issue 9): the in-memory backend's own limit; NATS
//! counts headers against the server's limit and never asks for less than a message; MySQL
//! splits a batch larger than the server's packet. Against the local servers.

use std::time::Duration;

use millstream::{ErrorKind, Message, Publisher, SubscribeOptions, Subscriber, Subscription};

const TIMEOUT: Duration = Duration::from_secs(30);

#[allow(dead_code)]
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("limits.{name}.{}.{nanos}", std::process::id())
}

async fn next(sub: &mut Subscription) -> millstream::Delivery {
    tokio::time::timeout(TIMEOUT, sub.next()).await.expect("a delivery in time").expect("open").expect("ok")
}

#[cfg(feature = "memory")]
#[tokio::test]
async fn memory_refuses_payloads_over_its_limit() {
    assert_eq!(millstream::MemoryPubSub::new().features().max_payload, None, "no limit by default");
    let pubsub = millstream::MemoryPubSub::new().max_payload(1024);
    assert_eq!(pubsub.features().max_payload, Some(1024));
    let mut sub = pubsub.subscribe("t", SubscribeOptions::group("g")).await.expect("subscribe");
    let error = pubsub.publish("t", Message::new(vec![0u8; 1025])).await.expect_err("over the limit");
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.is_permanent());
    assert_eq!(
        error.message(),
        "message too large: payload of 1025 bytes, over the limit of 1024 bytes (MemoryConfig::max_payload)"
    );
    pubsub.publish("t", Message::new(vec![1u8; 1024])).await.expect("at the limit");
    let delivery = next(&mut sub).await;
    assert_eq!(delivery.message().payload().len(), 1024, "the refused message was not queued");
    delivery.ack().await.expect("ack");
}

#[cfg(feature = "nats")]
use crate::support::nats as lock;

#[cfg(feature = "nats")]
mod nats {
    use millstream::pubsub::nats::{NatsConfig, NatsPubSub};

    use super::*;

    fn url() -> String {
        std::env::var("MILLSTREAM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
    }

    async fn pubsub(config: NatsConfig) -> (NatsPubSub, std::fs::File) {
        let lock = super::lock::shared().await;
        (NatsPubSub::connect(&url(), config.stream_prefix("MSTEST_")).await.expect("connect"), lock)
    }

    /// A payload within the reported limit whose metadata takes the message over the server's
    /// `max_payload` is refused before it is sent (the server would close the connection).
    #[tokio::test]
    async fn headers_count_against_the_server_limit() {
        let (pubsub, _lock) = pubsub(NatsConfig::default()).await;
        let server = pubsub.client().server_info().max_payload;
        let max = pubsub.features().max_payload.expect("a declared limit");
        assert_eq!(max, server - 8 * 1024, "the server's limit less room for headers");
        let topic = unique("nats-headers");
        let mut sub = pubsub.subscribe(&topic, SubscribeOptions::group("g")).await.expect("subscribe");
        let heavy = Message::new(vec![0u8; max]).with_header("big", "x".repeat(9 * 1024));
        let error = pubsub.publish(&topic, heavy).await.expect_err("over the server's limit");
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(error.is_permanent());
        assert!(error.message().contains("payload and headers"), "{error}");
        assert!(error.message().contains(&format!("limit of {server} bytes")), "{error}");
        // The connection is still there.
        pubsub.publish(&topic, Message::new("after")).await.expect("publish");
        let delivery = next(&mut sub).await;
        assert_eq!(&delivery.message().payload()[..], b"after");
        delivery.ack().await.expect("ack");
        pubsub.delete_topics(&[topic]).await.expect("cleanup");
    }

    /// A pull never asks for fewer bytes than a message may have: with `batch_bytes` far below
    /// the largest payload, such a payload is still delivered.
    #[tokio::test]
    async fn a_small_batch_bytes_still_delivers_the_largest_message() {
        let (pubsub, _lock) = pubsub(NatsConfig::default().batch_bytes(1024)).await;
        let max = pubsub.features().max_payload.expect("a declared limit");
        let topic = unique("nats-batch-bytes");
        let mut sub = pubsub.subscribe(&topic, SubscribeOptions::group("g")).await.expect("subscribe");
        let big = Message::new(vec![3u8; max]);
        pubsub.publish(&topic, big.clone()).await.expect("publish");
        let delivery = next(&mut sub).await;
        assert_eq!(delivery.message().id(), big.id());
        assert_eq!(delivery.message().payload().len(), max);
        delivery.ack().await.expect("ack");
        pubsub.delete_topics(&[topic]).await.expect("cleanup");
    }
}

/// One publish of more than MySQL's `max_allowed_packet` in all goes through (several INSERTs,
/// one transaction), and `max_payload` is the server's packet less 64 KiB.
#[cfg(feature = "mysql")]
#[tokio::test]
async fn mysql_splits_a_batch_larger_than_a_packet() {
    use millstream::{SqlConfig, SqlPubSub};

    let url = std::env::var("MILLSTREAM_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let pool = sqlx::MySqlPool::connect(&url).await.expect("connect");
    let packet: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
        .fetch_one(&pool)
        .await
        .expect("packet");
    pool.close().await;
    let config = SqlConfig::default().table_prefix("mslimits_").batch_bytes(64 * 1024 * 1024);
    let pubsub = SqlPubSub::connect(&url, config).await.expect("connect");
    assert_eq!(pubsub.features().max_payload, Some(packet as usize - 64 * 1024));
    let topic = unique("mysql-packet");
    let mut sub = pubsub.subscribe(&topic, SubscribeOptions::group("g")).await.expect("subscribe");
    let size = 4 * 1024 * 1024;
    let count = packet as usize / size + 2;
    let sent: Vec<Message> = (0..count).map(|n| Message::new(vec![n as u8; size])).collect();
    pubsub.publish_batch(&topic, sent.clone()).await.expect("a batch over a packet");
    for original in &sent {
        let delivery = next(&mut sub).await;
        assert_eq!(delivery.message().id(), original.id(), "in order");
        assert!(delivery.message().payload() == original.payload(), "intact");
        delivery.ack().await.expect("ack");
    }
    drop(sub);
    pubsub.delete_topics(&[topic]).await.expect("cleanup");
    Publisher::close(&pubsub).await.expect("close");
    Subscriber::close(&pubsub).await.expect("close");
}

/// MySQL publishes a message in one round trip, its values written into the statement text as
/// hex literals: a topic, metadata and payloads full of quotes, backslashes, NULs and non-ASCII
/// come back byte for byte. A publish the server refuses halfway (a stray row already holds the
/// number just reserved) is rolled back on its connection: the next publish on that connection
/// (the pool's only one) takes the same number, so the topic has no gap.
#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_one_trip_publish_keeps_bytes_and_rolls_back() {
    use millstream::{Metadata, SqlConfig, SqlPubSub};

    let url = std::env::var("MILLSTREAM_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let prefix = "msonetrip_";
    let publisher = SqlPubSub::connect(&url, SqlConfig::default().table_prefix(prefix).max_connections(1))
        .await
        .expect("connect");
    let subscriber =
        SqlPubSub::connect(&url, SqlConfig::default().table_prefix(prefix)).await.expect("connect");
    let topic = unique("it's \\ \"q\" ü 😀");
    let mut sub = subscriber.subscribe(&topic, SubscribeOptions::group("g")).await.expect("subscribe");
    let metadata = Metadata::builder().with("note", "o'k \\' \"x\" \0 ü").with("it's", "\\").build();
    let payloads: Vec<Vec<u8>> = vec![
        b"plain".to_vec(),
        b"it's a \\' \"quote\"\0 end;COMMIT".to_vec(),
        Vec::new(),
        (0..=255u8).collect(),
        "ünïcödé 😀".as_bytes().to_vec(),
    ];
    let sent: Vec<Message> =
        payloads.into_iter().map(|p| Message::new(p).with_metadata(metadata.clone())).collect();
    for message in &sent {
        publisher.publish(&topic, message.clone()).await.expect("publish");
    }
    for original in &sent {
        let delivery = next(&mut sub).await;
        assert_eq!(delivery.message().id(), original.id(), "in order");
        assert!(delivery.message().payload() == original.payload(), "payload intact");
        assert_eq!(delivery.message().metadata().get("note"), metadata.get("note"), "metadata intact");
        assert_eq!(delivery.message().metadata().get("it's"), Some("\\"), "metadata intact");
        delivery.ack().await.expect("ack");
    }

    let raw = sqlx::MySqlPool::connect(&url).await.expect("connect");
    let last: i64 = sqlx::query_scalar(&format!("SELECT last_seq FROM {prefix}topics WHERE topic = ?"))
        .bind(&topic)
        .fetch_one(&raw)
        .await
        .expect("the topic's row");
    assert_eq!(last, 5);
    sqlx::query(&format!(
        "INSERT INTO {prefix}messages (topic, seq, id, metadata, payload, created_ms, size) \
         VALUES (?, ?, 'stray', '{{}}', '', 0, 0)"
    ))
    .bind(&topic)
    .bind(last + 1)
    .execute(&raw)
    .await
    .expect("a stray row");
    let refused = publisher.publish(&topic, Message::new("refused")).await;
    assert!(refused.is_err(), "the number is taken: {refused:?}");
    sqlx::query(&format!("DELETE FROM {prefix}messages WHERE topic = ? AND id = 'stray'"))
        .bind(&topic)
        .execute(&raw)
        .await
        .expect("the stray row goes");
    let after = Message::new("after");
    publisher.publish(&topic, after.clone()).await.expect("publish after the refusal");
    let seq: i64 =
        sqlx::query_scalar(&format!("SELECT seq FROM {prefix}messages WHERE topic = ? AND id = ?"))
            .bind(&topic)
            .bind(after.id().to_string())
            .fetch_one(&raw)
            .await
            .expect("stored");
    assert_eq!(seq, last + 1, "the refused publish's reservation was rolled back");
    let delivery = next(&mut sub).await;
    assert_eq!(delivery.message().id(), after.id(), "the refused message was not stored");
    delivery.ack().await.expect("ack");
    drop(sub);
    raw.close().await;
    subscriber.delete_topics(&[topic]).await.expect("cleanup");
    for pubsub in [publisher, subscriber] {
        Publisher::close(&pubsub).await.expect("close");
        Subscriber::close(&pubsub).await.expect("close");
    }
}
