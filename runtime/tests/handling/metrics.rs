//! Router metrics through the `metrics` facade (cargo feature `metrics`).
#![cfg(feature = "metrics")]

use std::collections::HashMap;

use crate::common::topic;
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
    assert_eq!(counter(names::SETTLE_FAILURES), 0);
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

/// A backend whose acks always fail: each failure is counted (and logged), and the router goes on.
#[test]
fn failed_acks_are_counted() {
    use std::sync::Arc;

    use millstream::pubsub::{AckSink, Acker, Delivery, OpFuture, Settle, Subscription, Token};
    use millstream::ErrorKind;

    struct FailingAcks;

    impl AckSink for FailingAcks {
        fn settle(&self, _: Token, _: Option<Message>, _: Settle) -> OpFuture<'static> {
            OpFuture::ready(Err(Error::new(ErrorKind::Backend, "connection reset by peer")))
        }
    }

    struct Source(parking_lot::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Delivery>>>);

    impl Subscriber for Source {
        fn subscribe<'a>(&'a self, _: &'a str, _: SubscribeOptions) -> OpFuture<'a, Subscription> {
            let receiver = self.0.lock().take().expect("subscribed once");
            let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|delivery| (Ok(delivery), receiver))
            });
            OpFuture::ready(Ok(Subscription::new(stream)))
        }

        fn close(&self) -> OpFuture<'_> {
            OpFuture::ready(Ok(()))
        }
    }

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let input = topic("failing.acks");
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            let handled = Arc::new(tokio::sync::Semaphore::new(0));
            let handler = {
                let handled = handled.clone();
                move |_: u32| {
                    let handled = handled.clone();
                    async move { handled.add_permits(1) }
                }
            };
            let router = App::new()
                .pubsub_parts(
                    Arc::new(MemoryPubSub::new()),
                    Arc::new(Source(parking_lot::Mutex::new(Some(receiver)))),
                )
                .route(Route::new("failing", &input, handler))
                .build()
                .unwrap();
            router.start().await.unwrap();
            let sink: Arc<dyn AckSink> = Arc::new(FailingAcks);
            for n in 0..3_u64 {
                let acker = Acker::new(sink.clone(), Token::new(n), None);
                sender.send(Delivery::new(Message::new(n.to_string()), 1, acker)).unwrap();
            }
            crate::common::within("3 handled", handled.acquire_many(3)).await.unwrap().forget();
            router.close().await.unwrap();
        });
    });
    let failures = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| key.key().name() == names::SETTLE_FAILURES)
        .map(|(.., value)| value);
    assert!(matches!(failures, Some(DebugValue::Counter(3))), "{failures:?}");
}
