//! Each middleware's behaviour, through a real router on the in-memory backend.

mod common;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, flaky, next_message, start, stop, topic, within, Event, Recording};
use millstream::middleware::{
    from_fn, BreakerState, CircuitBreaker, CorrelationId, Deduplicator, DelayOnNack, IgnoreErrors,
    InstantAck, Next, PoisonQueue, RandomFail, RandomPanic, Recoverer, RedeliveryCap, Retry, Throttle,
    Timeout, TraceContext, TraceParent, CORRELATION_ID, TRACEPARENT,
};
use millstream::router::{poison_keys, RouterConfig};
use millstream::App;
use millstream::{
    Attempt, Ctx, Error, ErrorKind, HandlerResult, Json, MemoryPubSub, Message, Metadata, Publisher, Route,
    SubscribeOptions, Subscriber,
};

fn counter() -> Arc<AtomicU32> {
    Arc::new(AtomicU32::new(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_retries_in_process_and_calls_the_hook() {
    let rec = Recording::new();
    let input = topic("retry");
    let calls = counter();
    let hooks = Arc::new(AtomicUsize::new(0));
    let retry = Retry::new(3).initial_interval(Duration::from_millis(1)).on_retry({
        let hooks = hooks.clone();
        move |event| {
            assert_eq!(event.handler, "flaky");
            hooks.fetch_add(1, Ordering::SeqCst);
        }
    });
    let router = App::new()
        .pubsub(rec.clone())
        .route(Route::new("flaky", &input, flaky(calls.clone(), 2)).layer(retry))
        .build()
        .unwrap();
    let task = start(&router).await;
    rec.inner.publish(&input, Message::new("{}")).await.unwrap();
    rec.log.wait_for("ack", |ev| ev.iter().any(|e| matches!(e, Event::Acked { .. }))).await;
    stop(&router, task).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(hooks.load(Ordering::SeqCst), 2);
    assert_eq!(rec.log.count(|e| matches!(e, Event::Nacked { .. })), 0, "retried without redelivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_gives_up_after_the_budget_and_never_retries_permanent_errors() {
    let rec = Recording::new();
    let (always, permanent) = (topic("always"), topic("permanent"));
    let calls = counter();
    let permanent_calls = counter();
    let fail_permanently = {
        let c = permanent_calls.clone();
        move |_: serde_json::Value| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(Error::permanent("bad order")) }
        }
    };
    let mut config = RouterConfig::default();
    config.poison_topic = None;
    let router = App::new()
        .pubsub(rec.clone())
        .config(config)
        .route(
            Route::new("always", &always, flaky(calls.clone(), u32::MAX))
                .layer(Retry::new(2).initial_interval(Duration::from_millis(1))),
        )
        .route(
            Route::new("permanent", &permanent, fail_permanently)
                .layer(Retry::new(5).initial_interval(Duration::from_millis(1))),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    rec.inner.publish(&always, Message::new("{}")).await.unwrap();
    rec.inner.publish(&permanent, Message::new("{}")).await.unwrap();
    rec.log
        .wait_for("both nacked", |ev| {
            ev.iter().any(|e| matches!(e, Event::Nacked { topic, .. } if *topic == always))
                && ev.iter().any(|e| matches!(e, Event::Nacked { topic, .. } if *topic == permanent))
        })
        .await;
    stop(&router, task).await;
    assert!(calls.load(Ordering::SeqCst) >= 3, "1 attempt + 2 retries before the first nack");
    assert_eq!(calls.load(Ordering::SeqCst) % 3, 0, "retries come in rounds of three per delivery");
    // Shutdown lets in-flight work finish, so every call has been settled by now.
    let permanent_nacks = rec.log.count(|e| matches!(e, Event::Nacked { topic, .. } if *topic == permanent));
    assert_eq!(
        permanent_calls.load(Ordering::SeqCst) as usize,
        permanent_nacks,
        "one call per delivery: permanent errors are not retried in process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retry_attempt_gets_a_fresh_timeout() {
    let pubsub = MemoryPubSub::new();
    let (input, output) = (topic("slow-first"), topic("slow-first.out"));
    let calls = counter();
    let handler = {
        let calls = calls.clone();
        move |_: serde_json::Value| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n == 1 {
                    std::future::pending::<()>().await; // the first attempt hangs
                }
                Ok::<_, Error>(Json(n))
            }
        }
    };
    let retry =
        Retry::new(2).initial_interval(Duration::from_millis(1)).attempt_timeout(Duration::from_millis(100));
    let mut out = pubsub.subscribe(&output, SubscribeOptions::default()).await.unwrap();
    let router = App::new()
        .pubsub(pubsub.clone())
        .route(Route::new("slow-first", &input, handler).publish(&output).layer(retry))
        .build()
        .unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, Message::new("{}")).await.unwrap();
    assert_eq!(&next_message(&mut out).await.payload()[..], b"2");
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fails_a_slow_handler_and_nacks() {
    let rec = Recording::new();
    let input = topic("timeout");
    let handler = |_: serde_json::Value, Attempt(a): Attempt| async move {
        if a == 1 {
            std::future::pending::<()>().await;
        }
    };
    let router = App::new()
        .pubsub(rec.clone())
        .route(Route::new("slow", &input, handler).layer(Timeout::new(Duration::from_millis(50))))
        .build()
        .unwrap();
    let task = start(&router).await;
    rec.inner.publish(&input, Message::new("{}")).await.unwrap();
    rec.log.wait_for("ack after redelivery", |ev| ev.iter().any(|e| matches!(e, Event::Acked { .. }))).await;
    stop(&router, task).await;
    assert_eq!(rec.log.count(|e| matches!(e, Event::Nacked { .. })), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_queue_takes_what_the_retries_could_not_fix() {
    let rec = Recording::new();
    let (input, poison) = (topic("doomed"), topic("doomed.poison"));
    let calls = counter();
    let mut dead = rec.inner.subscribe(&poison, SubscribeOptions::default()).await.unwrap();
    let router = App::new()
        .pubsub(rec.clone())
        .route(
            Route::new("doomed", &input, flaky(calls.clone(), u32::MAX))
                .layer(PoisonQueue::new(&poison))
                .layer(Retry::new(2).initial_interval(Duration::from_millis(1))),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    let sent = Message::new(r#"{"order":1}"#).with_header("tenant", "acme");
    rec.inner.publish(&input, sent.clone()).await.unwrap();
    let m = next_message(&mut dead).await;
    assert_eq!(m.id(), sent.id());
    assert_eq!(m.payload(), sent.payload());
    let meta = m.metadata();
    assert_eq!(meta.get("tenant"), Some("acme"));
    assert_eq!(meta.get(poison_keys::REASON), Some("failure 3"));
    assert_eq!(meta.get(poison_keys::HANDLER), Some("doomed"));
    assert_eq!(meta.get(poison_keys::TOPIC), Some(input.as_str()));
    assert_eq!(meta.get(poison_keys::ATTEMPT), Some("1"));
    assert_eq!(meta.get(poison_keys::KIND), Some("Handler"));
    assert!(meta.get(poison_keys::TIME).unwrap().parse::<u128>().unwrap() > 1_700_000_000_000);
    rec.log
        .wait_for("input acked", |ev| {
            ev.iter().any(|e| matches!(e, Event::Acked { topic, .. } if *topic == input))
        })
        .await;
    stop(&router, task).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(rec.log.count(|e| matches!(e, Event::Nacked { .. })), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_after_deliveries_lets_the_backend_redeliver_first() {
    let rec = Recording::new();
    let (input, poison) = (topic("capped"), topic("capped.poison"));
    let calls = counter();
    let mut dead = rec.inner.subscribe(&poison, SubscribeOptions::default()).await.unwrap();
    let router = App::new()
        .pubsub(rec.clone())
        .route(
            Route::new("capped", &input, flaky(calls.clone(), u32::MAX))
                .layer(PoisonQueue::new(&poison).after_deliveries(3)),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    rec.inner.publish(&input, Message::new("{}")).await.unwrap();
    let m = next_message(&mut dead).await;
    assert_eq!(m.metadata().get(poison_keys::ATTEMPT), Some("3"));
    stop(&router, task).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(rec.log.count(|e| matches!(e, Event::Nacked { .. })), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_filter_and_redelivery_cap() {
    let pubsub = MemoryPubSub::new();
    let (input, poison) = (topic("cap"), topic("cap.poison"));
    let calls = counter();
    let mut dead = pubsub.subscribe(&poison, SubscribeOptions::default()).await.unwrap();
    // Only permanent errors are poisoned; the cap turns the 4th delivery into one.
    let router = App::new()
        .pubsub(pubsub.clone())
        .route(
            Route::new("cap", &input, flaky(calls.clone(), u32::MAX))
                .layer(PoisonQueue::new(&poison).filter(Error::is_permanent))
                .layer(RedeliveryCap::new(3)),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, Message::new("{}")).await.unwrap();
    let m = next_message(&mut dead).await;
    assert_eq!(m.metadata().get(poison_keys::ATTEMPT), Some("4"));
    assert!(m.metadata().get(poison_keys::REASON).unwrap().contains("more than the cap of 3"));
    stop(&router, task).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the capped delivery never reached the handler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recoverer_turns_panics_into_errors_that_middleware_can_poison() {
    let pubsub = MemoryPubSub::new();
    let (input, poison) = (topic("panic"), topic("panic.poison"));
    let mut dead = pubsub.subscribe(&poison, SubscribeOptions::default()).await.unwrap();
    let handler = |_: serde_json::Value| async {
        if true {
            panic!("index out of bounds: the len is 0");
        }
    };
    let router = App::new()
        .pubsub(pubsub.clone())
        .route(Route::new("panicky", &input, handler).layer(PoisonQueue::new(&poison)).layer(Recoverer))
        .build()
        .unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, Message::new("{}")).await.unwrap();
    let m = next_message(&mut dead).await;
    assert_eq!(m.metadata().get(poison_keys::KIND), Some("Panic"));
    assert_eq!(
        m.metadata().get(poison_keys::REASON),
        Some("handler panicked: index out of bounds: the len is 0")
    );
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_and_trace_context_follow_the_message() {
    let pubsub = MemoryPubSub::new();
    let (input, output, side) = (topic("corr"), topic("corr.out"), topic("corr.side"));
    let seen = Arc::new(parking_lot::Mutex::new(Metadata::new()));
    let handler = {
        let (seen, side) = (seen.clone(), side.clone());
        move |_: serde_json::Value, meta: Metadata, ctx: Ctx| {
            *seen.lock() = meta;
            let side = side.clone();
            async move {
                ctx.publish_to(&side, &1).await?;
                Ok::<_, Error>(Json(2))
            }
        }
    };
    let mut out = pubsub.subscribe(&output, SubscribeOptions::default()).await.unwrap();
    let mut side_out = pubsub.subscribe(&side, SubscribeOptions::default()).await.unwrap();
    let router = App::new()
        .pubsub(pubsub.clone())
        .layer(CorrelationId)
        .layer(TraceContext)
        .route(Route::new("corr", &input, handler).publish(&output))
        .build()
        .unwrap();
    let task = start(&router).await;

    // Without a correlation id or trace: the message's id becomes the correlation id; a trace starts.
    let first = Message::new("{}");
    pubsub.publish(&input, first.clone()).await.unwrap();
    let returned = next_message(&mut out).await;
    let published = next_message(&mut side_out).await;
    let first_id = first.id().to_string();
    for m in [&returned, &published] {
        assert_eq!(m.metadata().get(CORRELATION_ID), Some(first_id.as_str()));
    }
    let hop = TraceParent::parse(returned.metadata().get(TRACEPARENT).unwrap()).unwrap();
    assert_eq!(published.metadata().get(TRACEPARENT), returned.metadata().get(TRACEPARENT));
    assert_eq!(
        seen.lock().get(TRACEPARENT),
        returned.metadata().get(TRACEPARENT),
        "the handler sees its hop"
    );

    // With both: kept, and the trace continues with a new span id.
    let upstream = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    pubsub
        .publish(
            &input,
            Message::new("{}").with_header(CORRELATION_ID, "order-7").with_header(TRACEPARENT, upstream),
        )
        .await
        .unwrap();
    let returned = next_message(&mut out).await;
    let published = next_message(&mut side_out).await;
    assert_eq!(returned.metadata().get(CORRELATION_ID), Some("order-7"));
    assert_eq!(published.metadata().get(CORRELATION_ID), Some("order-7"));
    let next_hop = TraceParent::parse(returned.metadata().get(TRACEPARENT).unwrap()).unwrap();
    assert_eq!(next_hop.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_ne!(next_hop.parent_id, 0x00f067aa0ba902b7);
    assert_ne!(hop.trace_id, next_hop.trace_id);
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduplicator_skips_repeats_but_not_failed_attempts() {
    let rec = Recording::new();
    let input = topic("dedup");
    let calls = counter();
    let router = App::new()
        .pubsub(rec.clone())
        .route(
            Route::new("dedup", &input, flaky(calls.clone(), 1))
                .layer(Deduplicator::new(Duration::from_secs(60)).by_metadata("order")),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    // Fails once (nacked, redelivered, handled), then two more copies of the same order: skipped.
    for _ in 0..3 {
        rec.inner.publish(&input, Message::new("{}").with_header("order", "42")).await.unwrap();
    }
    rec.inner.publish(&input, Message::new("{}").with_header("order", "43")).await.unwrap();
    rec.log
        .wait_for("4 acks", |ev| ev.iter().filter(|e| matches!(e, Event::Acked { .. })).count() == 4)
        .await;
    stop(&router, task).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3, "42 twice (fail, success), 43 once");
    assert_eq!(rec.log.count(|e| matches!(e, Event::Nacked { .. })), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_ack_acks_before_the_handler_runs() {
    let rec = Recording::new();
    let input = topic("instant");
    let gate = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (gate, entered) = (gate.clone(), entered.clone());
        move |_: serde_json::Value| {
            let (gate, entered) = (gate.clone(), entered.clone());
            async move {
                let open = gate.notified();
                entered.notify_one();
                open.await;
                Err::<(), _>(Error::msg("lost: at-most-once"))
            }
        }
    };
    let router = App::new()
        .pubsub(rec.clone())
        .route(Route::new("instant", &input, handler).layer(InstantAck))
        .build()
        .unwrap();
    let task = start(&router).await;
    rec.inner.publish(&input, Message::new("{}")).await.unwrap();
    within("handler entered", entered.notified()).await;
    assert_eq!(rec.log.count(|e| matches!(e, Event::Acked { .. })), 1, "acked while the handler still runs");
    gate.notify_waiters();
    stop(&router, task).await;
    assert_eq!(
        rec.log.count(|e| matches!(e, Event::Nacked { .. })),
        0,
        "an instantly acked message is never nacked"
    );
}

#[tokio::test(start_paused = true)]
async fn delay_on_nack_delays_redelivery_by_attempt() {
    let pubsub = MemoryPubSub::new();
    let input = topic("delay");
    let times = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let handler = {
        let times = times.clone();
        move |_: serde_json::Value, Attempt(a): Attempt| {
            times.lock().push(tokio::time::Instant::now());
            async move {
                if a < 3 {
                    Err(Error::msg("later"))
                } else {
                    Ok(())
                }
            }
        }
    };
    let router = App::new()
        .pubsub(pubsub.clone())
        .route(
            Route::new("delay", &input, handler)
                .layer(DelayOnNack::new(Duration::from_secs(1), Duration::from_secs(60))),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, Message::new("{}")).await.unwrap();
    eventually("three attempts", || times.lock().len() >= 3).await;
    stop(&router, task).await;
    let t = times.lock();
    assert!(t[1] - t[0] >= Duration::from_secs(1), "{:?}", t[1] - t[0]);
    assert!(t[2] - t[1] >= Duration::from_secs(2), "{:?}", t[2] - t[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_errors_acks_the_chosen_failures() {
    let rec = Recording::new();
    let input = topic("ignore");
    let handler =
        |_: serde_json::Value| async { Err::<(), _>(Error::new(ErrorKind::Timeout, "slow downstream")) };
    let router = App::new()
        .pubsub(rec.clone())
        .route(Route::new("ignore", &input, handler).layer(IgnoreErrors::kinds([ErrorKind::Timeout])))
        .build()
        .unwrap();
    let task = start(&router).await;
    rec.inner.publish(&input, Message::new("{}")).await.unwrap();
    rec.log.wait_for("ack", |ev| ev.iter().any(|e| matches!(e, Event::Acked { .. }))).await;
    stop(&router, task).await;
    assert_eq!(rec.log.count(|e| matches!(e, Event::Nacked { .. })), 0);
}

#[tokio::test(start_paused = true)]
async fn throttle_spaces_calls_out() {
    let pubsub = MemoryPubSub::new();
    let input = topic("throttle");
    let times = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let handler = {
        let times = times.clone();
        move |_: serde_json::Value| {
            times.lock().push(tokio::time::Instant::now());
            async {}
        }
    };
    let router = App::new()
        .pubsub(pubsub.clone())
        .route(
            Route::new("throttled", &input, handler)
                .layer(Throttle::per_handler(10, Duration::from_secs(1)).burst(2)),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    for _ in 0..6 {
        pubsub.publish(&input, Message::new("{}")).await.unwrap();
    }
    eventually("six calls", || times.lock().len() >= 6).await;
    stop(&router, task).await;
    let t = times.lock();
    let span = t[5] - t[0];
    // A burst of two, then one every 100 ms: the sixth call comes 400 ms after the first.
    assert!(span >= Duration::from_millis(400) && span < Duration::from_millis(500), "{span:?}");
    assert!(t[1] - t[0] < Duration::from_millis(10), "the burst goes through at once");
}

#[tokio::test(start_paused = true)]
async fn circuit_breaker_opens_fails_fast_and_closes_after_cool_down() {
    let rec = Recording::new();
    let input = topic("breaker");
    let calls = counter();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler = {
        let (calls, healthy) = (calls.clone(), healthy.clone());
        move |_: serde_json::Value| {
            calls.fetch_add(1, Ordering::SeqCst);
            let ok = healthy.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(Error::msg("downstream down"))
                }
            }
        }
    };
    let breaker = CircuitBreaker::new(3, Duration::from_secs(10));
    let router = App::new()
        .pubsub(rec.clone())
        .route(Route::new("guarded", &input, handler).layer(breaker.clone()).concurrency(1))
        .build()
        .unwrap();
    let task = start(&router).await;
    rec.inner.publish(&input, Message::new("{}")).await.unwrap();
    // Three failures open the breaker; then the nacked message comes back with the remaining
    // cool-down as its redelivery delay and fails fast without reaching the handler.
    eventually("open", || breaker.state() == BreakerState::Open).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    healthy.store(true, Ordering::SeqCst);
    rec.log.wait_for("acked after cool-down", |ev| ev.iter().any(|e| matches!(e, Event::Acked { .. }))).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4, "one trial call after the cool-down");
    assert_eq!(breaker.state(), BreakerState::Closed);
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_recoverer_and_retry_still_handles_everything() {
    let pubsub = MemoryPubSub::new();
    let input = topic("chaos");
    let handled = Arc::new(parking_lot::Mutex::new(std::collections::HashSet::new()));
    let handler = {
        let handled = handled.clone();
        move |n: u32| {
            handled.lock().insert(n);
            async {}
        }
    };
    let router = App::new()
        .pubsub(pubsub.clone())
        .route(
            Route::new("chaotic", &input, handler)
                .layer(Retry::new(50).initial_interval(Duration::from_micros(10)).jitter(0.0))
                .layer(Recoverer)
                .layer(RandomFail::new(0.3))
                .layer(RandomPanic::new(0.2)),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    for n in 0..200u32 {
        pubsub.publish(&input, Message::new(n.to_string())).await.unwrap();
    }
    eventually("all handled", || handled.lock().len() >= 200).await;
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_wide_layers_run_outside_handler_layers_in_order() {
    let pubsub = MemoryPubSub::new();
    let (input, output) = (topic("order"), topic("order.out"));
    fn tag(name: &'static str) -> impl millstream::Middleware {
        from_fn(move |mut message: Message, next: Next| async move {
            let trail = format!("{}{name}>", message.metadata().get("trail").unwrap_or(""));
            message.metadata_mut().insert("trail", trail);
            next.run(message).await
        })
    }
    let handler = |meta: Metadata| async move { Json(meta.get("trail").unwrap_or("").to_owned()) };
    let mut out = pubsub.subscribe(&output, SubscribeOptions::default()).await.unwrap();
    let router = App::new()
        .pubsub(pubsub.clone())
        .layer(tag("a"))
        .layer(tag("b"))
        .route(Route::new("ordered", &input, handler).publish(&output).layer(tag("c")))
        .build()
        .unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, Message::new("{}")).await.unwrap();
    assert_eq!(&next_message(&mut out).await.payload()[..], br#""a>b>c>""#);
    stop(&router, task).await;
}

#[allow(dead_code)]
fn middleware_are_object_safe(layers: Vec<Box<dyn millstream::Middleware>>) -> usize {
    let _: fn(Message, Next) -> futures_util::future::BoxFuture<'static, HandlerResult> =
        |m, n| Box::pin(n.run(m));
    layers.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_sees_in_process_retries_as_attempts() {
    let rec = Recording::new();
    let input = topic("attempts");
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let handler = {
        let seen = seen.clone();
        move |_: serde_json::Value, Attempt(a): Attempt| {
            seen.lock().push(a);
            async move {
                if a < 3 {
                    Err(Error::msg("again"))
                } else {
                    Ok(())
                }
            }
        }
    };
    let router = App::new()
        .pubsub(rec.clone())
        .route(
            Route::new("attempts", &input, handler)
                .layer(Retry::new(5).initial_interval(Duration::from_millis(1))),
        )
        .build()
        .unwrap();
    let task = start(&router).await;
    rec.inner.publish(&input, Message::new("{}")).await.unwrap();
    rec.log.wait_for("ack", |ev| ev.iter().any(|e| matches!(e, Event::Acked { .. }))).await;
    stop(&router, task).await;
    assert_eq!(*seen.lock(), [1, 2, 3]);
}
