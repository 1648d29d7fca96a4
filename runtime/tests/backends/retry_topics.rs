//! Non-blocking retry topics on real brokers (SQLite, NATS, Kafka on a private tansu): a failing
//! message is retried on `{topic}.retry.{delay}` topics while the one behind it is handled first,
//! with true attempts and its id; one that keeps failing ends on the dead letter topic.
#![cfg(feature = "conformance")]
// Helpers serve only some backends: a build with a few of them leaves the rest unused.
#![cfg_attr(
    not(all(feature = "sqlite", feature = "nats", feature = "kafka")),
    allow(dead_code, unused_imports)
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use millstream::keys::poison;
use millstream::pubsub::PubSub;
use millstream::{App, Attempt, Error, Json, Message, MessageId, Route, SubscribeOptions, Subscriber};
use parking_lot::Mutex;

use crate::common::{next_message, start, stop, within};

type Calls = Arc<Mutex<Vec<(String, u32, MessageId, Instant)>>>;

fn json(text: &str) -> Message {
    Message::new(serde_json::to_vec(text).unwrap())
}

/// Runs the flow on `pubsub`; `topic` is unique to the run. Returns the topics it used.
async fn retries_on<P: PubSub + Clone>(pubsub: P, topic: &str) -> Vec<String> {
    let dead = format!("{topic}.dlt");
    let mut dlt = pubsub.subscribe(&dead, SubscribeOptions::group("ops")).await.unwrap();
    let calls: Calls = Arc::default();
    let handler = {
        let calls = calls.clone();
        move |Json(text): Json<String>, Attempt(attempt): Attempt, id: MessageId| {
            calls.lock().push((text.clone(), attempt, id, Instant::now()));
            let fail = (text == "flaky" && attempt < 3) || text == "hopeless";
            std::future::ready(if fail {
                Err(Error::msg(format!("{text} failed at {attempt}")))
            } else {
                Ok(())
            })
        }
    };
    let delays = [Duration::from_millis(800), Duration::from_millis(600)];
    let route = Route::new("retrying", topic, handler).retry_topics(delays).dead_letter(&dead);
    let router = App::new().pubsub(pubsub.clone()).route(route).build().unwrap();
    let task = start(&router).await;

    let flaky = json("flaky");
    let id = flaky.id();
    pubsub.publish(topic, flaky.with_key("k")).await.unwrap();
    pubsub.publish(topic, json("behind")).await.unwrap();
    within("three attempts of `flaky`", async {
        while calls.lock().iter().filter(|c| c.0 == "flaky").count() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    {
        let calls = calls.lock();
        let flaky: Vec<_> = calls.iter().filter(|c| c.0 == "flaky").collect();
        assert_eq!(flaky.iter().map(|c| (c.1, c.2)).collect::<Vec<_>>(), [(1, id), (2, id), (3, id)]);
        assert!(flaky[1].3 - flaky[0].3 >= delays[0], "first retry early");
        assert!(flaky[2].3 - flaky[1].3 >= delays[1], "second retry early");
        let behind = calls.iter().position(|c| c.0 == "behind").expect("`behind` handled");
        let retried = calls.iter().position(|c| c.0 == "flaky" && c.1 == 2).unwrap();
        assert!(behind < retried, "`behind` waited for the retry: {calls:?}");
    }

    let hopeless = json("hopeless");
    let hopeless_id = hopeless.id();
    pubsub.publish(topic, hopeless).await.unwrap();
    let dead_one = next_message(&mut dlt).await;
    assert_eq!(dead_one.id(), hopeless_id);
    assert_eq!(dead_one.metadata().get(poison::ATTEMPT), Some("3"));
    assert_eq!(dead_one.metadata().get(poison::TOPIC), Some(topic));
    assert_eq!(calls.lock().iter().filter(|c| c.0 == "flaky").count(), 3, "handled again after success");
    stop(&router, task).await;
    drop(dlt);
    let mut topics: Vec<String> = delays.iter().map(|d| millstream::router::retry_topic(topic, *d)).collect();
    topics.push(topic.to_owned());
    topics.push(dead);
    topics
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite() {
    let dir = std::env::temp_dir().join(format!("millstream-retry-topics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.join("retry.db").display());
    let config = millstream::SqlConfig::default().poll_interval(Duration::from_millis(20));
    let pubsub = millstream::SqlPubSub::connect(&url, config).await.unwrap();
    retries_on(pubsub, "retry.sqlite").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats() {
    let _lock = crate::support::nats::shared().await;
    let url = std::env::var("MILLSTREAM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let config = millstream::NatsConfig::default().stream_prefix("MSTEST_");
    let pubsub = millstream::NatsPubSub::connect(&url, config).await.expect("connect");
    let topic = format!("retry.nats.{}", std::process::id());
    for topic in retries_on(pubsub.clone(), &topic).await {
        let _ = pubsub.delete_topic(&topic).await;
    }
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka() {
    use crate::support::kafka::{unique, Broker};
    let broker = tokio::task::spawn_blocking(Broker::start).await.expect("start tansu");
    let config = millstream::KafkaConfig::new(broker.brokers()).create_topics(1, 1);
    let pubsub = millstream::KafkaPubSub::connect(config).await.expect("connect");
    retries_on(pubsub, &unique("retry-kafka")).await;
}
