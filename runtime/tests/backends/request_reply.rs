//! Request–reply on durable backends: SQLite (embedded), NATS JetStream, Redis Streams, RabbitMQ,
//! MQTT and Kafka (the local servers).
//! The replying handler is an ordinary route; each test uses topics of its own.
#![cfg(any(
    feature = "sqlite",
    feature = "nats",
    feature = "redis",
    feature = "amqp",
    feature = "mqtt",
    feature = "kafka"
))]

use std::time::Duration;

use millstream::prelude::*;
use millstream::{PubSub, RequestError, Requester};

const WAIT: Duration = Duration::from_secs(60);

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Doubled {
    value: u64,
}

async fn double(value: Json<u64>) -> Result<Json<Doubled>> {
    if value.0 == 0 {
        return Err(Error::permanent("zero cannot be doubled here"));
    }
    Ok(Json(Doubled { value: value.0 * 2 }))
}

fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}.{}", &id[id.len() - 12..])
}

/// Ten requests answered, a permanent failure sent back, on `pubsub`; returns the requester's
/// reply topic (deleted by then). The requester closes first (on SQL, closing the router closes
/// the pool they share), unless `router_first` (on Kafka's test broker, deleting the reply topic
/// deletes every topic: nothing may read or write after it; see `kafka_answers_requests`).
async fn requests_are_answered(pubsub: impl PubSub + Clone, router_first: bool) -> String {
    let topic = unique("rr.double");
    let route = Route::new(topic.clone(), topic.clone(), double).publish(format!("{topic}.out"));
    let router = App::new().route(route).pubsub(pubsub.clone()).start().await.expect("start");
    let requester = Requester::connect(pubsub.clone()).await.expect("requester");
    for value in 1..=10u64 {
        let doubled: Doubled = requester.request_to(&topic, &value, WAIT).await.expect("a reply");
        assert_eq!(doubled, Doubled { value: value * 2 });
    }
    let error = requester.request_to::<_, Doubled>(&topic, &0u64, WAIT).await.expect_err("an error reply");
    let RequestError::Remote(remote) = error else { panic!("a remote error: {error}") };
    assert_eq!(remote.message(), "zero cannot be doubled here");
    let reply_topic = requester.reply_topic().to_owned();
    if router_first {
        router.close().await.expect("close");
        requester.close().await.expect("close the requester");
    } else {
        requester.close().await.expect("close the requester");
        router.close().await.expect("close");
    }
    reply_topic
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_answers_requests() {
    let dir = std::env::temp_dir().join(unique("millstream-rr"));
    std::fs::create_dir_all(&dir).unwrap();
    let pubsub = millstream::SqlPubSub::open_sqlite(dir.join("db.sqlite"), millstream::SqlConfig::default())
        .await
        .expect("open");
    let reply_topic = requests_are_answered(pubsub.clone(), false).await;
    // The reply topic is gone with its requester (read on a new pool: closing the router closed
    // the pub/sub's).
    let reopened =
        millstream::SqlPubSub::open_sqlite(dir.join("db.sqlite"), millstream::SqlConfig::default())
            .await
            .expect("reopen");
    let pool = reopened.sqlite_pool().expect("SQLite").clone();
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM millstream_topics WHERE topic = ?")
        .bind(&reply_topic)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 0, "{reply_topic} deleted");
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_answers_requests() {
    let _lock = crate::support::nats::shared().await;
    let url = std::env::var("MILLSTREAM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let config = millstream::NatsConfig::default().stream_prefix("MSTEST_");
    let pubsub = millstream::NatsPubSub::connect(&url, config).await.expect("connect");
    let reply_topic = requests_are_answered(pubsub.clone(), false).await;
    // The reply topic's stream is gone with its requester.
    let jetstream = async_nats::jetstream::new(pubsub.client().clone());
    let stream = jetstream.get_stream(pubsub.stream_name(&reply_topic)).await;
    assert!(stream.is_err(), "the stream of {reply_topic} was deleted");
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_answers_requests() {
    let prefix = crate::support::redis::unique("rr");
    let config = millstream::RedisConfig::default().key_prefix(&prefix);
    let pubsub =
        millstream::RedisPubSub::connect(&crate::support::redis::url(), config).await.expect("connect");
    requests_are_answered(pubsub, false).await;
}

#[cfg(feature = "amqp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_answers_requests() {
    use millstream::pubsub::amqp::Preset;
    let config =
        millstream::AmqpConfig::new(crate::support::amqp::url()).topology(Preset::groups("mstest.rr"));
    let pubsub = millstream::AmqpPubSub::connect(config).await.expect("connect");
    requests_are_answered(pubsub, false).await;
}

#[cfg(feature = "mqtt")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_answers_requests() {
    let config =
        millstream::pubsub::mqtt::MqttConfig::from_url(&crate::support::mqtt::shared_url(), unique("rr"))
            .expect("url");
    let pubsub = millstream::MqttPubSub::connect(config).await.expect("connect");
    requests_are_answered(pubsub, false).await;
}

/// On a private broker: the requester deletes its reply topic when it closes, and tansu 0.6's
/// SQLite storage deletes every topic of the broker with it (docs/backends.md, "tansu 0.6.0"),
/// which on the shared broker would take other tests' topics. (Its memory storage deletes only
/// the one, but there librdkafka crashed reading a metadata answer, one run in two.)
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_answers_requests() {
    use millstream::pubsub::kafka::{KafkaConfig, KafkaPubSub};
    use millstream::SubscribeOptions;
    let broker =
        tokio::task::spawn_blocking(crate::support::kafka::Broker::start).await.expect("start tansu");
    // Topics made as they are first used: the requester's reply topic too (a group-less
    // subscription needs its topic to exist).
    let config = KafkaConfig::new(broker.brokers()).create_topics(1, 1);
    let pubsub = KafkaPubSub::connect(config).await.expect("connect");
    let reply_topic = requests_are_answered(pubsub.clone(), true).await;
    // The reply topic is gone with its requester.
    let metadata = KafkaPubSub::connect(KafkaConfig::new(broker.brokers())).await.expect("connect again");
    let error = metadata
        .subscribe(&reply_topic, SubscribeOptions::default())
        .await
        .map(drop)
        .expect_err("the reply topic was deleted");
    assert!(error.to_string().contains("does not exist"), "{error}");
}
