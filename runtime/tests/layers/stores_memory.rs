//! The in-memory stores keep their contracts, and `CountAttempts` counts deliveries for a cap on a
//! backend that counts none.
#![cfg(feature = "conformance")]

use std::sync::Arc;

use futures_util::StreamExt;
use parking_lot::Mutex;

use crate::common::{next_message, start, stop, topic, within};
use millstream::conformance::{check_attempt_store, check_dedup_store};
use millstream::middleware::{
    AttemptStore, CountAttempts, MemoryAttemptStore, MemoryDedupStore, RedeliveryCap,
};
use millstream::pubsub::{Attempts, Features, OpFuture};
use millstream::router::{poison_keys, RouterConfig};
use millstream::{App, Attempt, Delivery, Error, MemoryPubSub, Message, Publisher, Route};
use millstream::{SubscribeOptions, Subscriber, Subscription};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_the_contract() {
    check_dedup_store(Arc::new(MemoryDedupStore::new()), "memory").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_attempt_store_keeps_the_contract() {
    check_attempt_store(Arc::new(MemoryAttemptStore::new()), "memory").await.unwrap();
}

/// A backend that counts no attempts: every delivery says 1, as Kafka's would without a count of
/// its own.
struct Uncounted(MemoryPubSub);

impl Subscriber for Uncounted {
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription> {
        OpFuture::boxed(async move {
            let sub = self.0.subscribe(topic, options).await?;
            Ok(Subscription::new(sub.map(|item| {
                item.map(|delivery| {
                    let (message, _attempt, acker) = delivery.into_parts();
                    Delivery::new(message, 1, acker)
                })
            })))
        })
    }

    fn close(&self) -> OpFuture<'_> {
        Subscriber::close(&self.0)
    }

    fn features(&self) -> Features {
        let mut features = self.0.features();
        features.backend = "uncounted";
        features.attempts = Attempts::Unknown;
        features
    }
}

/// A handler that always fails (transiently), recording the attempt it was told.
fn always_failing(
    seen: Arc<Mutex<Vec<u32>>>,
) -> impl Fn(serde_json::Value, Attempt) -> std::future::Ready<Result<(), Error>> + Clone {
    move |_, Attempt(n)| {
        seen.lock().push(n);
        std::future::ready(Err(Error::msg(format!("attempt {n} failed"))))
    }
}

/// A router on `pubsub`'s uncounted view with a poison topic, running `route`.
fn app(pubsub: &MemoryPubSub, poison: &str, route: Route) -> App {
    App::new()
        .pubsub_parts(Arc::new(pubsub.clone()), Arc::new(Uncounted(pubsub.clone())))
        .config(RouterConfig::default().poison_topic(poison).nack_delay(None))
        .route(route)
}

/// The cap is refused without a count and works with one: the handler sees attempts 1, 2, 3 from
/// the store, the fourth delivery goes to the poison topic with attempt 4 in its metadata, and the
/// store forgets the message once it is settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_attempts_gives_a_cap_its_count_on_a_backend_that_counts_none() {
    let pubsub = MemoryPubSub::new();
    let (input, poison) = (topic("counted"), topic("counted.poison"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::new(MemoryAttemptStore::new());

    let uncounted = Route::new("capped", &input, always_failing(seen.clone())).layer(RedeliveryCap::new(3));
    let refused = app(&pubsub, &poison, uncounted).build().unwrap_err().to_string();
    assert!(
        refused.contains("`RedeliveryCap` decides on the delivery attempt, but the `uncounted` backend"),
        "{refused}"
    );
    // Counting inside the cap does not help it: the cap still reads the backend's count.
    let inside = Route::new("capped", &input, always_failing(seen.clone()))
        .layer(RedeliveryCap::new(3))
        .layer(CountAttempts::new(store.clone()));
    assert!(app(&pubsub, &poison, inside).build().is_err(), "a count inside the cap is refused");

    let mut dead = pubsub.subscribe(&poison, SubscribeOptions::default()).await.unwrap();
    let route = Route::new("capped", &input, always_failing(seen.clone()))
        .layer(CountAttempts::new(store.clone()))
        .layer(RedeliveryCap::new(3));
    let router = app(&pubsub, &poison, route).build().unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, Message::new(r#"{"order":1}"#)).await.unwrap();

    let poisoned = within("the message poisoned", next_message(&mut dead)).await;
    assert_eq!(*seen.lock(), [1, 2, 3], "the handler saw the store's count");
    assert_eq!(poisoned.metadata().get(poison_keys::ATTEMPT), Some("4"));
    let reason = poisoned.metadata().get(poison_keys::REASON).unwrap_or_default();
    assert!(reason.contains("delivered 4 times, more than the cap of 3"), "{reason}");
    assert!(store.is_empty(), "the count is forgotten once the message is settled");
    stop(&router, task).await;
}

/// Counts recorded elsewhere (another process sharing the store, or this one before a restart)
/// carry on: a message already delivered twice is handled once more, as attempt 3, then capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_kept_from_before_carries_on() {
    let pubsub = MemoryPubSub::new();
    let (input, poison) = (topic("carried"), topic("carried.poison"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::new(MemoryAttemptStore::new());
    let message = Message::new(r#"{"order":2}"#);
    let key = format!("carried:{}", message.id());
    for _ in 0..2 {
        store.record(&key, std::time::Duration::from_secs(60)).await.unwrap();
    }

    let mut dead = pubsub.subscribe(&poison, SubscribeOptions::default()).await.unwrap();
    let route = Route::new("carried", &input, always_failing(seen.clone()))
        .layer(CountAttempts::new(store.clone()))
        .layer(RedeliveryCap::new(3));
    let router = app(&pubsub, &poison, route).build().unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, message).await.unwrap();

    let poisoned = within("the message poisoned", next_message(&mut dead)).await;
    assert_eq!(*seen.lock(), [3], "one handling, as the third attempt");
    assert_eq!(poisoned.metadata().get(poison_keys::ATTEMPT), Some("4"));
    stop(&router, task).await;
}

/// A success forgets the count, and a store that cannot be reached fails the message (it is
/// nacked) without calling the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_forgets_and_an_unreachable_store_nacks_without_handling() {
    struct Broken;
    impl AttemptStore for Broken {
        fn record<'a>(&'a self, _: &'a str, _: std::time::Duration) -> OpFuture<'a, u32> {
            OpFuture::ready(Err(Error::new(millstream::ErrorKind::Backend, "store down")))
        }
        fn forget<'a>(&'a self, _: &'a str) -> OpFuture<'a> {
            OpFuture::ready(Ok(()))
        }
    }
    let rec = crate::common::Recording::new();
    let (ok, broken) = (topic("forgets"), topic("broken"));
    let store = Arc::new(MemoryAttemptStore::new());
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let handled = {
        let calls = calls.clone();
        move |_: serde_json::Value| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok::<(), Error>(()))
        }
    };
    let router = App::new()
        .pubsub(rec.clone())
        .route(Route::new("forgets", &ok, handled.clone()).layer(CountAttempts::new(store.clone())))
        .route(Route::new("broken", &broken, handled).layer(CountAttempts::new(Arc::new(Broken))))
        .build()
        .unwrap();
    let task = start(&router).await;
    rec.inner.publish(&ok, Message::new("{}")).await.unwrap();
    rec.log
        .wait_for("the success acked", |ev| {
            ev.iter().any(|e| matches!(e, crate::common::Event::Acked { .. }))
        })
        .await;
    assert!(store.is_empty(), "a success forgets its count");
    rec.inner.publish(&broken, Message::new("{}")).await.unwrap();
    rec.log
        .wait_for("the broken one nacked", |ev| {
            ev.iter().any(|e| matches!(e, crate::common::Event::Nacked { .. }))
        })
        .await;
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the handler ran for the counted message only"
    );
    stop(&router, task).await;
}
