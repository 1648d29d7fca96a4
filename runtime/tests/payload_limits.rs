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
#[path = "support/nats.rs"]
mod lock;

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
