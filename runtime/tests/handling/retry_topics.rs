//! Non-blocking retry topics in memory: a failing message goes through `{topic}.retry.{delay}`
//! topics (not before each delay) while the messages behind it flow on; the handler sees the true
//! attempt and the original id; spent retries and permanent failures end on the dead letter topic
//! with the reason; a handler with only a dead letter still nacks transient failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use millstream::keys::poison;
use millstream::{
    App, Attempt, Error, Json, MemoryPubSub, Message, MessageId, Publisher, Route, SubscribeOptions,
    Subscriber,
};
use parking_lot::Mutex;

use crate::common::{next_message, start, stop, topic, within};

type Calls = Arc<Mutex<Vec<(String, u32, MessageId, Instant)>>>;

/// A handler that records each call and fails `text` messages whose text starts with `fail`
/// until attempt `succeed_at` (never, with 0), with a permanent error for `bad`.
fn handler(
    calls: Calls,
    succeed_at: u32,
) -> impl Fn(Json<String>, Attempt, MessageId) -> std::future::Ready<Result<(), Error>> + Clone {
    move |Json(text): Json<String>, Attempt(attempt): Attempt, id: MessageId| {
        calls.lock().push((text.clone(), attempt, id, Instant::now()));
        let result = if text.starts_with("bad") {
            Err(Error::permanent("bad input"))
        } else if text.starts_with("fail") && (succeed_at == 0 || attempt < succeed_at) {
            Err(Error::msg(format!("failed at attempt {attempt}")))
        } else {
            Ok(())
        };
        std::future::ready(result)
    }
}

async fn wait_calls(calls: &Calls, n: usize) {
    within("handler calls", async {
        while calls.lock().len() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

fn json(text: &str) -> Message {
    Message::new(serde_json::to_vec(text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_is_retried_on_retry_topics_without_holding_up_the_rest() {
    let pubsub = MemoryPubSub::new();
    let input = topic("retry-topics");
    let calls: Calls = Arc::default();
    let route = Route::new("bill", &input, handler(calls.clone(), 3))
        .retry_topics([Duration::from_millis(500), Duration::from_millis(400)]);
    let router = App::new().pubsub(pubsub.clone()).route(route).build().unwrap();
    let names: Vec<String> = router.handlers().into_iter().map(|h| h.name).collect();
    assert!(names.contains(&"bill".to_owned()), "{names:?}");
    let task = start(&router).await;

    let failing = json("fail me");
    let id = failing.id();
    pubsub.publish(&input, failing).await.unwrap();
    pubsub.publish(&input, json("next")).await.unwrap();
    wait_calls(&calls, 4).await;
    let calls = calls.lock().clone();
    let seen: Vec<(&str, u32)> =
        calls.iter().map(|(text, attempt, _, _)| (text.as_str(), *attempt)).collect();
    assert_eq!(
        seen,
        [("fail me", 1), ("next", 1), ("fail me", 2), ("fail me", 3)],
        "the next message went first"
    );
    assert!(calls.iter().filter(|c| c.0 == "fail me").all(|c| c.2 == id), "the original id on every attempt");
    let first = calls[0].3;
    assert!(calls[2].3 - first >= Duration::from_millis(500), "retried early: {:?}", calls[2].3 - first);
    assert!(calls[3].3 - calls[2].3 >= Duration::from_millis(400), "second retry early");
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_retries_and_permanent_failures_end_on_the_dead_letter_topic() {
    let pubsub = MemoryPubSub::new();
    let input = topic("retry-dlt");
    let dead = format!("{input}.dlt");
    let mut dlt = pubsub.subscribe(&dead, SubscribeOptions::group("ops")).await.unwrap();
    let calls: Calls = Arc::default();
    let route = Route::new("ship", &input, handler(calls.clone(), 0))
        .retry_topics([Duration::from_millis(50), Duration::from_millis(50 * 2)])
        .dead_letter(&dead);
    let router = App::new().pubsub(pubsub.clone()).route(route).build().unwrap();
    let task = start(&router).await;

    let failing = json("fail always");
    let id = failing.id();
    pubsub.publish(&input, failing.with_key("order-9")).await.unwrap();
    let dead_one = next_message(&mut dlt).await;
    assert_eq!(dead_one.id(), id);
    assert_eq!(dead_one.key(), Some("order-9"), "the key is kept");
    let meta = dead_one.metadata();
    assert_eq!(meta.get(poison::ATTEMPT), Some("3"));
    assert_eq!(meta.get(poison::TOPIC), Some(input.as_str()), "the handler's own topic");
    assert_eq!(meta.get(poison::REASON), Some("failed at attempt 3"));

    pubsub.publish(&input, json("bad payload")).await.unwrap();
    let dead_two = next_message(&mut dlt).await;
    assert_eq!(dead_two.metadata().get(poison::ATTEMPT), Some("1"), "a permanent failure is not retried");
    assert_eq!(calls.lock().iter().filter(|c| c.0 == "bad payload").count(), 1);
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_alone_keeps_nacking_transient_failures() {
    let pubsub = MemoryPubSub::new();
    let input = topic("dlt-only");
    let calls: Calls = Arc::default();
    let route = Route::new("only", &input, handler(calls.clone(), 2)).dead_letter(format!("{input}.dlt"));
    let router = App::new().pubsub(pubsub.clone()).route(route).build().unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, json("fail once")).await.unwrap();
    wait_calls(&calls, 2).await;
    let attempts: Vec<u32> = calls.lock().iter().map(|c| c.1).collect();
    assert_eq!(attempts, [1, 2], "nacked and redelivered by the broker");
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_topics_of_no_delay_or_the_same_delay_are_refused() {
    let calls: Calls = Arc::default();
    let route = Route::new("r", "in", handler(calls.clone(), 0)).retry_topics([
        Duration::ZERO,
        Duration::from_secs(60),
        Duration::from_millis(60_000),
    ]);
    let error = App::new().pubsub(MemoryPubSub::new()).route(route).build().unwrap_err().to_string();
    assert!(error.contains("handler `r` has a retry topic of no delay"), "{error}");
    assert!(error.contains("handler `r` has two retry topics of 1m"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_one_handler_are_not_taken_by_another_on_the_same_topic() {
    let pubsub = MemoryPubSub::new();
    let input = topic("retry-two-groups");
    let (failing, steady): (Calls, Calls) = (Arc::default(), Arc::default());
    let delays = [Duration::from_millis(100)];
    let router = App::new()
        .pubsub(pubsub.clone())
        .route(Route::new("failing", &input, handler(failing.clone(), 2)).retry_topics(delays))
        .route(Route::new("steady", &input, handler(steady.clone(), 1)).retry_topics(delays))
        .build()
        .unwrap();
    let task = start(&router).await;
    pubsub.publish(&input, json("fail once")).await.unwrap();
    wait_calls(&failing, 2).await;
    // `steady` read the original; a sentinel behind the retry shows it has read everything since.
    pubsub.publish(&input, json("sentinel")).await.unwrap();
    within("steady reads the sentinel", async {
        while !steady.lock().iter().any(|c| c.0 == "sentinel") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await; // (a retry copy would be due by now)
    let steady_texts: Vec<String> = steady.lock().iter().map(|c| c.0.clone()).collect();
    assert_eq!(steady_texts, ["fail once", "sentinel"], "`steady` took `failing`'s retry");
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_retries_need_a_delay_store_and_retries_need_one_backend() {
    let calls: Calls = Arc::default();
    let long = Route::new("long", "in", handler(calls.clone(), 0)).retry_topics([Duration::from_secs(60)]);
    let error = App::new().pubsub(MemoryPubSub::new()).route(long).build().unwrap_err().to_string();
    assert!(error.contains("has a retry topic of 1m: a message would wait there longer"), "{error}");
    let long = Route::new("long", "in", handler(calls.clone(), 0)).retry_topics([Duration::from_secs(60)]);
    App::new()
        .pubsub(MemoryPubSub::new())
        .delays(millstream::MemoryDelayStore::new())
        .route(long)
        .build()
        .unwrap();

    let split = Route::new("split", "in", handler(calls, 0)).retry_topics([Duration::from_secs(1)]);
    let error = App::new()
        .pubsub_parts(Arc::new(MemoryPubSub::new()), Arc::new(MemoryPubSub::new()))
        .route(split)
        .build()
        .unwrap_err()
        .to_string();
    assert!(error.contains("reads from one backend and publishes to another"), "{error}");
}
