//! tower interop: real tower layers around handlers through `TowerLayer`, and `Next` as a
//! `tower::Service`.
#![cfg(feature = "tower")]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{next_message, start, stop, take, topic};
use millstream::middleware::tower::{from_tower, TowerLayer};
use millstream::middleware::{from_fn, Next, PoisonQueue};
use millstream::router::poison_keys;
use millstream::{App, Error, Json, MemoryPubSub, Message, Publisher, Route, SubscribeOptions, Subscriber};
use tokio::sync::Notify;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_layer_is_one_limit_for_all_the_workers_of_a_handler() {
    let pubsub = MemoryPubSub::new();
    let (input, output) = (topic("tower-limit"), topic("tower-limit.out"));
    let (inside, most) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let handler = {
        let (inside, most) = (inside.clone(), most.clone());
        move |n: u32| {
            let (inside, most) = (inside.clone(), most.clone());
            async move {
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                Json(n)
            }
        }
    };
    let mut out = pubsub.subscribe(&output, SubscribeOptions::default()).await.unwrap();
    let router = App::new()
        .pubsub(pubsub.clone())
        .route(
            Route::new("tower-limit", &input, handler)
                .publish(&output)
                .concurrency(4)
                .layer(TowerLayer::new(tower::limit::ConcurrencyLimitLayer::new(2))),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    for n in 0..12 {
        pubsub.publish(&input, Message::new(n.to_string())).await.unwrap();
    }
    let mut got: Vec<u32> = take(&mut out, 12).await.iter().map(|p| p.parse().unwrap()).collect();
    stop(&router, task).await;
    got.sort_unstable();
    assert_eq!(got, (0..12).collect::<Vec<_>>());
    // Four workers, twelve messages of 20 ms each: without the shared limit, four would overlap.
    assert_eq!(most.load(Ordering::SeqCst), 2, "the limit holds across messages and workers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tower_timeout_becomes_a_timeout_error_and_handler_errors_pass_through_unchanged() {
    let pubsub = MemoryPubSub::new();
    let (input, poison) = (topic("tower-timeout"), topic("tower-timeout.poison"));
    let handler = |mode: String| async move {
        match mode.as_str() {
            "slow" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            }
            _ => Err(Error::permanent("bad input").retry_after(Duration::from_secs(7))),
        }
    };
    let mut dead = pubsub.subscribe(&poison, SubscribeOptions::default()).await.unwrap();
    let router = App::new()
        .pubsub(pubsub.clone())
        .route(
            Route::new("tower-timeout", &input, handler)
                .layer(PoisonQueue::new(&poison))
                .layer(TowerLayer::new(tower::timeout::TimeoutLayer::new(Duration::from_millis(50)))),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, Message::new(r#""slow""#)).await.unwrap();
    let m = next_message(&mut dead).await;
    assert_eq!(m.metadata().get(poison_keys::KIND), Some("Timeout"));
    assert_eq!(m.metadata().get(poison_keys::REASON), Some("timed out: request timed out"));
    pubsub.publish(&input, Message::new(r#""fail""#)).await.unwrap();
    let m = next_message(&mut dead).await;
    assert_eq!(m.metadata().get(poison_keys::KIND), Some("Handler"));
    assert_eq!(m.metadata().get(poison_keys::REASON), Some("bad input"));
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shedding_refuses_what_the_limit_cannot_take() {
    let pubsub = MemoryPubSub::new();
    let (input, poison) = (topic("tower-shed"), topic("tower-shed.poison"));
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let handler = {
        let (entered, release) = (entered.clone(), release.clone());
        move |_: serde_json::Value| {
            let (entered, release) = (entered.clone(), release.clone());
            async move {
                entered.notify_one();
                release.notified().await;
            }
        }
    };
    let stack = tower::ServiceBuilder::new().load_shed().concurrency_limit(1).into_inner();
    let mut dead = pubsub.subscribe(&poison, SubscribeOptions::default()).await.unwrap();
    let router = App::new()
        .pubsub(pubsub.clone())
        .route(
            Route::new("tower-shed", &input, handler)
                .concurrency(2)
                .layer(PoisonQueue::new(&poison))
                .layer(TowerLayer::new(stack)),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, Message::new("1")).await.unwrap();
    common::within("the first message reaches the handler", entered.notified()).await;
    pubsub.publish(&input, Message::new("2")).await.unwrap();
    let m = next_message(&mut dead).await;
    assert_eq!(&m.payload()[..], b"2");
    assert_eq!(m.metadata().get(poison_keys::KIND), Some("Handler"));
    assert_eq!(m.metadata().get(poison_keys::REASON), Some("service overloaded"));
    release.notify_one();
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_is_a_tower_service() {
    let pubsub = MemoryPubSub::new();
    let (input, output) = (topic("tower-next"), topic("tower-next.out"));
    let calls = Arc::new(AtomicU32::new(0));
    // A middleware that hands the rest of its chain to tower: a retry policy-free oneshot under
    // tower's timeout, and the error mapped back.
    let through_tower = from_fn(|message: Message, next: Next| async move {
        let service = tower::timeout::Timeout::new(next, Duration::from_secs(5));
        service.oneshot(message).await.map_err(from_tower)
    });
    let handler = {
        let calls = calls.clone();
        move |n: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Json(n * 2) }
        }
    };
    let mut out = pubsub.subscribe(&output, SubscribeOptions::default()).await.unwrap();
    let router = App::new()
        .pubsub(pubsub.clone())
        .route(Route::new("tower-next", &input, handler).publish(&output).layer(through_tower))
        .build()
        .unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, Message::new("21")).await.unwrap();
    assert_eq!(&next_message(&mut out).await.payload()[..], b"42");
    stop(&router, task).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_handler_is_a_tower_service_with_its_layers() {
    let input = topic("tower.route-service");
    async fn double(value: u64) -> Json<u64> {
        Json(value * 2)
    }
    let layered = Arc::new(AtomicU32::new(0));
    let counter = layered.clone();
    let router = App::new()
        .pubsub(MemoryPubSub::new())
        .layer(from_fn(move |message: Message, next: Next| {
            counter.fetch_add(1, Ordering::SeqCst);
            next.run(message)
        }))
        .route(Route::new("double", &input, double).publish(topic("tower.route-service.out")))
        .build()
        .unwrap();
    assert!(router.service("double").is_none(), "chains are built at the start");
    router.start().await.unwrap();
    assert!(router.service("nobody").is_none());
    let service = router.service("double").expect("a started handler");
    let outputs = service.oneshot(Message::new("21")).await.expect("the handler's outputs");
    assert_eq!(outputs.len(), 1);
    assert_eq!(&outputs[0].message.payload()[..], b"42");
    assert_eq!(layered.load(Ordering::SeqCst), 1, "the app's layer ran around the call");
    let bad = router.service("double").unwrap().oneshot(Message::new("not a number")).await;
    let error = bad.map(drop).expect_err("a payload that does not decode");
    assert!(format!("{error:?}").contains("payload does not decode"), "{error:?}");
    router.shutdown();
    router.close().await.unwrap();
}
