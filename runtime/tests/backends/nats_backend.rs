//! NATS JetStream beyond the conformance suite: term, ack wait, strict order with
//! `max_ack_pending = 1`, stream and consumer provisioning. Against the nats-server here.
#![cfg(feature = "nats")]

use std::time::Duration;

use millstream::pubsub::nats::{NatsConfig, NatsPubSub};
use millstream::{Message, Publisher, SubscribeOptions, Subscriber, Subscription};

use crate::support::nats as lock;

const TIMEOUT: Duration = Duration::from_secs(30);

fn url() -> String {
    std::env::var("MILLSTREAM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn topic(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("nats-test.{name}.{}.{nanos}", std::process::id())
}

async fn next(sub: &mut Subscription) -> (String, u32, millstream::Delivery) {
    let d = tokio::time::timeout(TIMEOUT, sub.next())
        .await
        .expect("a delivery in time")
        .expect("open")
        .expect("ok");
    (String::from_utf8(d.message().payload().to_vec()).unwrap(), d.attempt(), d)
}

/// The pub/sub, and the shared lock that keeps the restart test away while this test runs.
async fn pubsub(config: NatsConfig) -> (NatsPubSub, std::fs::File) {
    let lock = lock::shared().await;
    (NatsPubSub::connect(&url(), config.stream_prefix("MSTEST_")).await.expect("connect"), lock)
}

/// Provisioning: the stream and the durable consumer exist after the first subscribe, with the
/// configured ack wait; an unsettled delivery comes back after it, with attempt 2; a termed one
/// never does (the next delivery is the next message, and the consumer has nothing pending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_ack_wait_and_term() {
    // No heartbeats: an unsettled delivery comes back after the ack wait.
    let config = NatsConfig::default().ack_wait(Duration::from_secs(1)).max_hold(Duration::ZERO);
    let (ps, _lock) = pubsub(config).await;
    let t = topic("term");
    let mut sub = ps.subscribe(&t, SubscribeOptions::group("workers")).await.unwrap();
    let mut stream = ps.ensure_stream(&t).await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.subjects, vec![t.clone()]);
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(&stream_consumer_name(&stream, "workers").await).await.unwrap();
    assert_eq!(consumer.cached_info().config.ack_wait, Duration::from_secs(1));

    ps.publish(&t, Message::new("held")).await.unwrap();
    let (text, attempt, held) = next(&mut sub).await;
    assert_eq!((text.as_str(), attempt), ("held", 1));
    let (_, _, acker) = held.into_parts();
    // Not settled: JetStream redelivers after the ack wait.
    let (text, attempt, again) = next(&mut sub).await;
    assert_eq!((text.as_str(), attempt), ("held", 2));
    std::mem::forget(acker);
    let (_, _, acker) = again.into_parts();
    acker.reject("no use retrying").await.unwrap();

    ps.publish(&t, Message::new("next")).await.unwrap();
    let (text, _, d) = next(&mut sub).await;
    assert_eq!(text, "next", "a termed message is not delivered again");
    d.ack().await.unwrap();
    drop(sub);
    ps.delete_topics(&[t]).await.unwrap();
}

async fn stream_consumer_name(stream: &async_nats::jetstream::stream::Stream, group: &str) -> String {
    use futures_util::StreamExt;
    let mut names = stream.consumer_names();
    let mut found = Vec::new();
    while let Some(name) = names.next().await {
        found.push(name.unwrap());
    }
    found.into_iter().find(|n| n.starts_with(group)).expect("the group's durable consumer")
}

/// `max_ack_pending = 1`: strict order, declared in the features; the next message waits for the
/// ack of the one before, and a nacked one comes back first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_order_with_one_pending() {
    let (ps, _lock) = pubsub(NatsConfig::default().max_ack_pending(1)).await;
    assert!(Subscriber::features(&ps).strict_order);
    let t = topic("strict");
    let mut sub = ps.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    for n in 0..3 {
        ps.publish(&t, Message::new(format!("m{n}"))).await.unwrap();
    }
    let (text, _, first) = next(&mut sub).await;
    assert_eq!(text, "m0");
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), sub.next()).await.is_err(),
        "nothing else while m0 is unsettled"
    );
    first.nack().await.unwrap();
    let (text, attempt, d) = next(&mut sub).await;
    assert_eq!((text.as_str(), attempt), ("m0", 2));
    d.ack().await.unwrap();
    for expected in ["m1", "m2"] {
        let (text, _, d) = next(&mut sub).await;
        assert_eq!(text, expected);
        d.ack().await.unwrap();
    }
    drop(sub);
    ps.delete_topics(&[t]).await.unwrap();
    Publisher::close(&ps).await.unwrap();
}

/// A topic that is not a NATS subject is refused with a configuration error.
#[tokio::test]
async fn topics_must_be_subjects() {
    let (ps, _lock) = pubsub(NatsConfig::default()).await;
    for bad in ["has space", "a..b", "wild.*", "tail.>", ""] {
        let error = ps.publish(bad, Message::new("x")).await.unwrap_err();
        assert_eq!(error.kind(), millstream::ErrorKind::Config, "{bad:?}");
    }
}

/// A handler holds its message for 4 ack waits while a second member of the group waits: the
/// heartbeats (`+WPI`) keep it, the other member gets nothing, and the late ack succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_slow_handlers_message() {
    let ack_wait = Duration::from_secs(2);
    let (ps, _lock) = pubsub(NatsConfig::default().ack_wait(ack_wait)).await;
    let t = topic("heartbeat");
    let mut slow = ps.subscribe(&t, SubscribeOptions::group("workers")).await.unwrap();
    let mut other = ps.subscribe(&t, SubscribeOptions::group("workers")).await.unwrap();
    ps.publish(&t, Message::new("slow")).await.unwrap();
    let held = tokio::select! {
        d = next(&mut slow) => d.2,
        d = next(&mut other) => d.2,
    };
    // Whichever member got it holds it; both keep reading.
    let started = std::time::Instant::now();
    let again = tokio::time::timeout(ack_wait * 4, async {
        tokio::select! {
            d = next(&mut slow) => d,
            d = next(&mut other) => d,
        }
    })
    .await;
    if let Ok((text, attempt, _)) = again {
        panic!(
            "{text:?} (attempt {attempt}) delivered again after {:?} while it was held",
            started.elapsed()
        );
    }
    held.ack().await.expect("the late ack");
    drop((slow, other));
    ps.delete_topics(&[t]).await.unwrap();
}

/// Retention: under a steady load (50 messages every 100 ms for 6 s) a stream whose messages
/// may be 2 s old stops growing: at the end it holds what arrived in the last few seconds, not
/// everything, and empties once the load stops; meanwhile a group that keeps up reads every
/// message. A stream made earlier without limits gets them when the topic is next used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_bounds_a_stream_under_steady_load() {
    let max_age = Duration::from_secs(2);
    let t = topic("retention");
    // Made first without limits, as an earlier version of a service would have.
    let (unlimited, _lock) = pubsub(NatsConfig::default()).await;
    assert_eq!(unlimited.ensure_stream(&t).await.unwrap().cached_info().config.max_age, Duration::ZERO);
    let config = NatsConfig::default().max_age(max_age);
    let ps = NatsPubSub::connect(&url(), config.stream_prefix("MSTEST_")).await.expect("connect");
    let mut stream = ps.ensure_stream(&t).await.unwrap();
    assert_eq!(stream.cached_info().config.max_age, max_age, "the limits are applied to the old stream");
    let mut sub = ps.subscribe(&t, SubscribeOptions::group("keeps-up")).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        while seen.len() < 3000 {
            let (body, _, delivery) = next(&mut sub).await;
            delivery.ack().await.unwrap();
            seen.insert(body);
        }
        seen.len()
    });
    let mut sizes = Vec::new();
    for round in 0..60 {
        let batch = (0..50).map(|i| Message::new(format!("{}", round * 50 + i))).collect();
        ps.publish_batch(&t, batch).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if round % 10 == 9 {
            sizes.push(stream.info().await.unwrap().state.messages);
        }
    }
    assert_eq!(
        tokio::time::timeout(TIMEOUT, reader).await.expect("the group read everything").unwrap(),
        3000
    );
    // 3 000 were published; with messages at most 2 s old, the stream held a few seconds' worth
    // (500 per second) once the first had expired, and never more, at every sample.
    assert!(sizes.iter().all(|&size| size < 2000), "the stream kept growing: {sizes:?}");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while stream.info().await.unwrap().state.messages > 0 {
        assert!(std::time::Instant::now() < deadline, "expired messages were never deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ps.delete_topics(&[t]).await.unwrap();
}
