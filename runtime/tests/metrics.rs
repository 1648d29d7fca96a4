//! Router metrics through the `metrics` facade (cargo feature `metrics`).
#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;

use common::topic;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use millstream::observe::names;
use millstream::App;
use millstream::{
    Attempt, Error, Json, MemoryPubSub, Message, Publisher, Route, SubscribeOptions, Subscriber,
};

#[test]
fn the_router_counts_what_happens_to_each_message() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (input, output, poison) = (topic("metered"), topic("metered.out"), topic("metered.poison"));
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let pubsub = MemoryPubSub::new();
            // Fails the first delivery of every message; the second succeeds.
            let handler = |n: u32, Attempt(a): Attempt| async move {
                if a == 1 {
                    return Err(Error::msg("first try fails"));
                }
                Ok(Json(n))
            };
            let mut config = millstream::RouterConfig::default();
            config.poison_topic = Some(poison.clone());
            let mut out = pubsub.subscribe(&output, SubscribeOptions::default()).await.unwrap();
            let mut dead = pubsub.subscribe(&poison, SubscribeOptions::default()).await.unwrap();
            let router = App::new()
                .pubsub(pubsub.clone())
                .config(config)
                .route(Route::new("metered", &input, handler).publish(&output))
                .build()
                .unwrap();
            router.start().await.unwrap();
            for n in 0..5 {
                pubsub.publish(&input, Message::new(n.to_string())).await.unwrap();
            }
            pubsub.publish(&input, Message::new("not a number")).await.unwrap();
            for _ in 0..5 {
                out.next().await.unwrap().unwrap().ack().await.unwrap();
            }
            dead.next().await.unwrap().unwrap().ack().await.unwrap();
            router.close().await.unwrap();
        });
    });

    let mut values: HashMap<String, DebugValue> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<_> = key.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        assert_eq!(labels, ["handler=metered"], "{:?}", key.key());
        values.insert(key.key().name().to_owned(), value);
    }
    let counter = |name: &str| match values.get(name) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(counter(names::RECEIVED), 11, "5 messages twice, the bad one once");
    assert_eq!(counter(names::ACKED), 6, "5 handled, 1 poisoned then acked");
    assert_eq!(counter(names::NACKED), 5);
    assert_eq!(counter(names::POISONED), 1);
    match values.get(names::IN_FLIGHT) {
        Some(DebugValue::Gauge(g)) => assert_eq!(g.into_inner(), 0.0),
        other => panic!("in flight: {other:?}"),
    }
    match values.get(names::HANDLER_DURATION) {
        Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 11),
        other => panic!("duration: {other:?}"),
    }
    match values.get(names::PUBLISH_DURATION) {
        Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 5),
        other => panic!("publish duration: {other:?}"),
    }
}
