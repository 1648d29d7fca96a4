//! Delayed delivery in memory: a `Scheduler` publishes when due (not before), in due order, with
//! the message whole; an app's `Delayed<T>` outputs; an app that cannot delay refuses them; long
//! retry delays are requeued through the store for the failing group only, with true attempts.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millstream::delay::{MemoryDelayStore, Scheduler};
use millstream::keys;
use millstream::router::RouterConfig;
use millstream::{
    App, Attempt, Delayed, Error, Json, MemoryPubSub, Message, MessageId, Publisher, Route, SubscribeOptions,
    Subscriber,
};
use parking_lot::Mutex;

use crate::common::{next_message, start, stop, topic, within};

fn text(message: &Message) -> String {
    String::from_utf8_lossy(message.payload()).into_owned()
}

async fn until_empty(scheduler: &Scheduler) {
    within("the store empties", async {
        while scheduler.pending().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_is_published_when_due_whole_and_not_before() {
    let pubsub = MemoryPubSub::new();
    let t = topic("delay.due");
    let mut sub = pubsub.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    let scheduler = Scheduler::new(MemoryDelayStore::new(), Arc::new(pubsub.clone()));
    let started = Instant::now();
    let later =
        Message::new("later").with_key("k-1").with_header("h", "v").deliver_after(Duration::from_millis(500));
    let id = later.id();
    scheduler.publish(&t, later).await.unwrap();
    scheduler.publish(&t, Message::new("now")).await.unwrap();
    assert_eq!(scheduler.pending().await.unwrap(), 1);

    assert_eq!(text(&next_message(&mut sub).await), "now");
    let got = next_message(&mut sub).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "published early: after {:?}",
        started.elapsed()
    );
    assert_eq!((text(&got), got.id(), got.key()), ("later".to_owned(), id, Some("k-1")));
    assert_eq!(got.metadata().get("h"), Some("v"));
    assert_eq!(got.metadata().get(keys::DELIVER_AT), None, "the delivery time is removed when published");
    until_empty(&scheduler).await;
    scheduler.close().await.unwrap();
    assert!(scheduler.publish(&t, Message::new("x").deliver_after(Duration::from_secs(1))).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_messages_come_in_due_order_and_batches_split() {
    let pubsub = MemoryPubSub::new();
    let t = topic("delay.order");
    let mut sub = pubsub.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    let scheduler = Scheduler::new(MemoryDelayStore::new(), Arc::new(pubsub.clone()));
    let at = |ms: u64| Duration::from_millis(ms);
    scheduler
        .publish_batch(
            &t,
            vec![
                Message::new("c").deliver_after(at(600)),
                Message::new("now-1"),
                Message::new("a").deliver_after(at(200)),
                Message::new("now-2"),
            ],
        )
        .await
        .unwrap();
    scheduler.publish_after(&t, Message::new("b"), at(400)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(text(&next_message(&mut sub).await));
    }
    assert_eq!(got, ["now-1", "now-2", "a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedulers_of_one_store_keep_their_scopes_apart() {
    let (one, two) = (MemoryPubSub::new(), MemoryPubSub::new());
    let t = topic("delay.scopes");
    let mut sub_one = one.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    let mut sub_two = two.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    let store: Arc<dyn millstream::delay::DelayStore> = Arc::new(MemoryDelayStore::new());
    let a = Scheduler::with_store(store.clone(), Arc::new(one.clone())).scope("one");
    let b = Scheduler::with_store(store.clone(), Arc::new(two.clone())).scope("two");
    a.publish_after(&t, Message::new("for one"), Duration::from_millis(50)).await.unwrap();
    b.publish_after(&t, Message::new("for two"), Duration::from_millis(50)).await.unwrap();
    assert_eq!(text(&next_message(&mut sub_one).await), "for one");
    assert_eq!(text(&next_message(&mut sub_two).await), "for two");
}

async fn remind(order: Json<serde_json::Value>) -> Delayed<Json<serde_json::Value>> {
    Delayed::after(Duration::from_millis(400), Json(serde_json::json!({ "remind": order.0["id"] })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_returning_delayed_publishes_when_due() {
    let pubsub = MemoryPubSub::new();
    let (input, output) = (topic("delay.in"), topic("delay.out"));
    let mut out = pubsub.subscribe(&output, SubscribeOptions::group("g")).await.unwrap();
    let router = App::new()
        .pubsub(pubsub.clone())
        .delays(MemoryDelayStore::new())
        .route(Route::new("remind", &input, remind).publish(&output))
        .build()
        .unwrap();
    let task = start(&router).await;
    let started = Instant::now();
    pubsub.publish(&input, Message::new(r#"{"id":7}"#)).await.unwrap();
    let got = next_message(&mut out).await;
    assert!(started.elapsed() >= Duration::from_millis(400), "published after {:?}", started.elapsed());
    assert_eq!(text(&got), r#"{"remind":7}"#);
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_without_a_delay_store_refuses_delayed_outputs() {
    let error = App::new()
        .pubsub(MemoryPubSub::new())
        .route(Route::new("remind", "in", remind).publish("out"))
        .build()
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("handler `remind` returns `Delayed` values, but its publisher cannot hold them"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_is_requeued_for_its_group_with_the_true_attempt() {
    let pubsub = MemoryPubSub::new();
    let input = topic("delay.requeue");
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let flaky = {
        let attempts = attempts.clone();
        move |value: Json<serde_json::Value>, Attempt(attempt): Attempt, id: MessageId| {
            let attempts = attempts.clone();
            async move {
                if value.0 == "sentinel" {
                    return Ok(());
                }
                attempts.lock().push((attempt, id));
                if attempt < 3 {
                    return Err(Error::msg("not yet").retry_after(Duration::from_millis(200)));
                }
                Ok(())
            }
        }
    };
    // Another group on the same topic: it sees the original once, and acks the copies requeued
    // for `flaky` without handling them. A sentinel published last tells when it has seen all.
    let other_calls = Arc::new(AtomicU32::new(0));
    let sentinel_seen = Arc::new(tokio::sync::Notify::new());
    let other = {
        let (calls, seen) = (other_calls.clone(), sentinel_seen.clone());
        move |value: Json<serde_json::Value>| {
            let (calls, seen) = (calls.clone(), seen.clone());
            async move {
                if value.0 == "sentinel" {
                    seen.notify_one();
                } else {
                    calls.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<(), Error>(())
            }
        }
    };
    let router = App::new()
        .pubsub(pubsub.clone())
        .delays(MemoryDelayStore::new())
        .config(RouterConfig::default().requeue_after(Some(Duration::from_millis(100))))
        .route(Route::new("flaky", &input, flaky))
        .route(Route::new("other", &input, other))
        .build()
        .unwrap();
    let task = start(&router).await;
    let mut poison = pubsub.subscribe("millstream.poison", SubscribeOptions::default()).await.unwrap();
    let original = Message::new(r#"{"id":1}"#);
    let id = original.id();
    pubsub.publish(&input, original).await.unwrap();
    within("three attempts", async {
        while attempts.lock().len() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(*attempts.lock(), [(1, id), (2, id), (3, id)], "true attempts, the original id");
    pubsub.publish(&input, Message::new(r#""sentinel""#)).await.unwrap();
    within("the other group reads the sentinel", sentinel_seen.notified()).await;
    assert_eq!(other_calls.load(Ordering::SeqCst), 1, "the other group handled a requeued copy");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), poison.next()).await.is_err(),
        "something was poisoned"
    );
    stop(&router, task).await;
    assert_eq!(attempts.lock().len(), 3, "handled again after success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_retry_is_nacked_as_before() {
    let pubsub = MemoryPubSub::new();
    let input = topic("delay.short");
    let calls = Arc::new(AtomicU32::new(0));
    let handler = {
        let calls = calls.clone();
        move |_: Json<serde_json::Value>| {
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(Error::msg("once").retry_after(Duration::from_millis(10)));
                }
                Ok(())
            }
        }
    };
    let store = MemoryDelayStore::new();
    let router = App::new()
        .pubsub(pubsub.clone())
        .delays(store.clone())
        .route(Route::new("short", &input, handler))
        .build()
        .unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, Message::new("{}")).await.unwrap();
    within("two calls", async {
        while calls.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    use millstream::delay::DelayStore as _;
    assert_eq!(store.count("").await.unwrap(), 0, "a 10 ms retry went through the delay store");
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_message_refused_for_good_is_set_aside_and_holds_up_nothing() {
    use millstream::delay::DelayStore as _;
    let pubsub = MemoryPubSub::new().max_payload(16);
    let t = topic("delay.refused");
    let mut sub = pubsub.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    let store = MemoryDelayStore::new();
    let scheduler = Scheduler::new(store.clone(), Arc::new(pubsub.clone()));
    let at = Duration::from_millis(100);
    let big = Message::new(vec![b'x'; 64]);
    let big_id = big.id();
    scheduler
        .publish_batch(&t, vec![big.deliver_after(at), Message::new("small").deliver_after(at)])
        .await
        .unwrap();
    assert_eq!(text(&next_message(&mut sub).await), "small", "the refused message held up the next");
    // Too large for the poison topic as well: parked in the store, never due, with the reason.
    within("the refused message is parked", async {
        loop {
            // (Only the parked message left: the relay is done with the batch.)
            if store.next_due("").await.unwrap() != Some(millstream::delay::PARKED) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let taken =
                store.take_due("", millstream::delay::PARKED, 10, Duration::from_secs(60)).await.unwrap();
            if let Some(parked) = taken.first() {
                assert_eq!(
                    (parked.delayed.message.id(), parked.delayed.due_ms),
                    (big_id, millstream::delay::PARKED)
                );
                let reason =
                    parked.delayed.message.metadata().get(millstream::delay::REFUSED).unwrap_or_default();
                assert!(reason.contains("message too large"), "{reason}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}
