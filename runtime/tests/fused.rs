//! Built-in layers run fused (as steps of one future); these check that a stack of them behaves
//! exactly like the layers nested in order, through a real router on the in-memory backend.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{next_message, start, stop, topic, Event, Recording};
use millstream::middleware::{
    from_fn, CorrelationId, IgnoreErrors, Middleware, Next, PoisonQueue, Recoverer, Retry, Timeout,
    CORRELATION_ID,
};
use millstream::router::poison_keys;
use millstream::App;
use millstream::{
    Ctx, Error, ErrorKind, Json, MemoryPubSub, Message, Metadata, Publisher, Route, SubscribeOptions,
    Subscriber,
};

fn failing(
    calls: Arc<AtomicU32>,
) -> impl Fn(serde_json::Value) -> std::future::Ready<Result<(), Error>> + Clone {
    move |_| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(Err(Error::msg(format!("failure {n}"))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_outside_a_retry_covers_the_attempts_and_the_backoff_together() {
    let rec = Recording::new();
    let (input, poison) = (topic("outer-timeout"), topic("outer-timeout.poison"));
    let calls = Arc::new(AtomicU32::new(0));
    let mut dead = rec.inner.subscribe(&poison, SubscribeOptions::default()).await.unwrap();
    // The first retry would wait 60 s; the timeout around the retry ends it after 100 ms.
    let router = App::new()
        .pubsub(rec.clone())
        .route(
            Route::new("outer-timeout", &input, failing(calls.clone()))
                .layer(PoisonQueue::new(&poison))
                .layer(Timeout::new(Duration::from_millis(100)))
                .layer(Retry::new(5).initial_interval(Duration::from_secs(60)).jitter(0.0)),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    rec.inner.publish(&input, Message::new("{}")).await.unwrap();
    let m = next_message(&mut dead).await;
    assert_eq!(m.metadata().get(poison_keys::KIND), Some("Timeout"));
    assert_eq!(m.metadata().get(poison_keys::REASON), Some("timed out: handler took longer than 100ms"));
    stop(&router, task).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the backoff was cut short, no second attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recoverer_inside_a_retry_makes_a_panic_retryable() {
    let pubsub = MemoryPubSub::new();
    let (input, output) = (topic("panic-retry"), topic("panic-retry.out"));
    let calls = Arc::new(AtomicU32::new(0));
    let handler = {
        let calls = calls.clone();
        move |_: serde_json::Value| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                assert!(n > 1, "the first call panics");
                Ok::<_, Error>(Json(n))
            }
        }
    };
    let mut out = pubsub.subscribe(&output, SubscribeOptions::default()).await.unwrap();
    let router = App::new()
        .pubsub(pubsub.clone())
        .route(
            Route::new("panic-retry", &input, handler)
                .publish(&output)
                .layer(Retry::new(2).initial_interval(Duration::from_millis(1)))
                .layer(Recoverer),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, Message::new("{}")).await.unwrap();
    assert_eq!(&next_message(&mut out).await.payload()[..], b"2");
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_layer_between_built_in_ones_sees_what_the_nesting_says() {
    let rec = Recording::new();
    let (input, poison) = (topic("between"), topic("between.poison"));
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let spy = {
        let seen = seen.clone();
        from_fn(move |message: Message, next: Next| {
            let seen = seen.clone();
            async move {
                let attempt = next.attempt();
                let result = next.run(message).await;
                let error = result.as_ref().err().map(|e| e.message().to_owned());
                seen.lock().push((attempt, error));
                result
            }
        })
    };
    let mut dead = rec.inner.subscribe(&poison, SubscribeOptions::default()).await.unwrap();
    let router = App::new()
        .pubsub(rec.clone())
        .route(
            Route::new("between", &input, failing(calls.clone()))
                .layer(PoisonQueue::new(&poison))
                .layer(spy)
                .layer(Retry::new(2).initial_interval(Duration::from_millis(1))),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    rec.inner.publish(&input, Message::new("{}")).await.unwrap();
    let m = next_message(&mut dead).await;
    assert_eq!(m.metadata().get(poison_keys::REASON), Some("failure 3"));
    rec.log
        .wait_for("input acked", |ev| {
            ev.iter().any(|e| matches!(e, Event::Acked { topic, .. } if *topic == input))
        })
        .await;
    stop(&router, task).await;
    // Outside the retry, the spy runs once and sees the last failure; the handler ran three times.
    assert_eq!(*seen.lock(), vec![(1, Some("failure 3".to_owned()))]);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_built_in_layer_called_by_hand_behaves_as_in_a_chain() {
    let pubsub = MemoryPubSub::new();
    let (input, output) = (topic("by-hand"), topic("by-hand.out"));
    let calls = Arc::new(AtomicU32::new(0));
    let handler = {
        let calls = calls.clone();
        move |_: serde_json::Value| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            std::future::ready(if n < 3 { Err(Error::msg("not yet")) } else { Ok(Json(n)) })
        }
    };
    // A custom middleware that delegates to a Retry it owns.
    let retry = Retry::new(3).initial_interval(Duration::from_millis(1));
    let wrapper = from_fn(move |message: Message, next: Next| retry.call(message, next));
    let mut out = pubsub.subscribe(&output, SubscribeOptions::default()).await.unwrap();
    let router = App::new()
        .pubsub(pubsub.clone())
        .route(Route::new("by-hand", &input, handler).publish(&output).layer(wrapper))
        .build()
        .unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, Message::new("{}")).await.unwrap();
    assert_eq!(&next_message(&mut out).await.payload()[..], b"3");
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_errors_never_reach_the_poison_step_outside() {
    let rec = Recording::new();
    let (input, poison) = (topic("ignored"), topic("ignored.poison"));
    let calls = Arc::new(AtomicU32::new(0));
    let router = App::new()
        .pubsub(rec.clone())
        .route(
            Route::new("ignored", &input, failing(calls.clone()))
                .layer(PoisonQueue::new(&poison))
                .layer(IgnoreErrors::kinds([ErrorKind::Handler])),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    rec.inner.publish(&input, Message::new("{}")).await.unwrap();
    rec.log
        .wait_for("input acked", |ev| {
            ev.iter().any(|e| matches!(e, Event::Acked { topic, .. } if *topic == input))
        })
        .await;
    stop(&router, task).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The poison publish would come before the ack: nothing was poisoned.
    assert_eq!(rec.log.count(|e| matches!(e, Event::Published { topic, .. } if *topic == poison)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_leaves_the_input_alone_and_stamps_what_the_handler_publishes() {
    let pubsub = MemoryPubSub::new();
    let (input, output, side) = (topic("corr-in"), topic("corr-in.out"), topic("corr-in.side"));
    let seen = Arc::new(parking_lot::Mutex::new(None));
    let handler = {
        let (seen, side) = (seen.clone(), side.clone());
        move |_: serde_json::Value, meta: Metadata, ctx: Ctx| {
            *seen.lock() = Some((meta, ctx.correlation_id().map(str::to_owned)));
            let side = side.clone();
            async move {
                ctx.publish_to(&side, &1).await?;
                Ok::<_, Error>(vec![Json(2), Json(3)])
            }
        }
    };
    let mut out = pubsub.subscribe(&output, SubscribeOptions::default()).await.unwrap();
    let mut side_out = pubsub.subscribe(&side, SubscribeOptions::default()).await.unwrap();
    let router = App::new()
        .pubsub(pubsub.clone())
        .layer(CorrelationId)
        .route(Route::new("corr-in", &input, handler).publish(&output))
        .build()
        .unwrap();
    let task = start(&router).await;
    let sent = Message::new("{}").with_header("tenant", "acme");
    pubsub.publish(&input, sent.clone()).await.unwrap();
    let id = sent.id().to_string();
    for m in [next_message(&mut out).await, next_message(&mut out).await, next_message(&mut side_out).await] {
        assert_eq!(m.metadata().get(CORRELATION_ID), Some(id.as_str()));
    }
    let (meta, from_ctx) = seen.lock().take().expect("the handler ran");
    assert_eq!(meta, Metadata::builder().with("tenant", "acme").build(), "the input is not rewritten");
    assert_eq!(from_ctx.as_deref(), Some(id.as_str()));
    stop(&router, task).await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_stops_when_the_next_wait_would_pass_its_elapsed_time_limit() {
    let rec = Recording::new();
    let (input, poison) = (topic("elapsed"), topic("elapsed.poison"));
    let calls = Arc::new(AtomicU32::new(0));
    let mut dead = rec.inner.subscribe(&poison, SubscribeOptions::default()).await.unwrap();
    // Waits of 100, 200, 400, 800 ms: the fourth failure comes at 700 ms, and 700 + 800 > 1000.
    let retry = Retry::new(10)
        .initial_interval(Duration::from_millis(100))
        .jitter(0.0)
        .max_elapsed(Duration::from_secs(1));
    let router = App::new()
        .pubsub(rec.clone())
        .route(
            Route::new("elapsed", &input, failing(calls.clone()))
                .layer(PoisonQueue::new(&poison))
                .layer(retry),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    rec.inner.publish(&input, Message::new("{}")).await.unwrap();
    let m = next_message(&mut dead).await;
    assert_eq!(m.metadata().get(poison_keys::REASON), Some("failure 4"));
    stop(&router, task).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}
