//! Batch handlers in memory: batches up to their size, gathered for their linger; outcomes per
//! message (acked, nacked and redelivered, poisoned with the reason); a payload that does not
//! decode goes to the poison topic alone; outputs published; an error fails the whole batch; a
//! batch in progress at shutdown is finished; misuse refused when the app is built.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use millstream::keys::poison;
use millstream::{
    App, BatchResult, Error, Json, MemoryPubSub, Message, Publisher, Route, RouterConfig, State,
    SubscribeOptions, Subscriber,
};
use parking_lot::Mutex;

use crate::common::{next_message, start, stop, take, topic, within};

/// Every batch the handler got, as the numbers in it.
type Batches = Arc<Mutex<Vec<Vec<u64>>>>;

async fn wait_total(batches: &Batches, n: usize) {
    within("batches", async {
        while batches.lock().iter().map(Vec::len).sum::<usize>() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

fn numbers(range: std::ops::RangeInclusive<u64>) -> Vec<Message> {
    range.map(|n| Message::new(n.to_string())).collect()
}

async fn record(numbers: Vec<u64>, State(batches): State<Batches>) {
    batches.lock().push(numbers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_hold_up_to_their_size_and_every_message_once() {
    let pubsub = MemoryPubSub::new();
    let input = topic("batch-size");
    let batches: Batches = Arc::default();
    let route = Route::batch("record", &input, record).batch_size(100).linger(Duration::from_millis(200));
    let router = App::new().pubsub(pubsub.clone()).state(batches.clone()).route(route).build().unwrap();
    let task = start(&router).await;
    pubsub.publish_batch(&input, numbers(1..=250)).await.unwrap();
    wait_total(&batches, 250).await;
    stop(&router, task).await;
    let batches = batches.lock().clone();
    assert!(
        batches.iter().all(|b| !b.is_empty() && b.len() <= 100),
        "{:?}",
        batches.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(batches.len() <= 5, "250 ready messages come in few batches: {}", batches.len());
    let all: Vec<u64> = batches.concat();
    assert_eq!(all, (1..=250).collect::<Vec<_>>(), "each message once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_short_of_its_size_waits_its_linger_then_goes() {
    let pubsub = MemoryPubSub::new();
    let input = topic("batch-linger");
    let batches: Batches = Arc::default();
    let linger = Duration::from_millis(300);
    let route = Route::batch("record", &input, record).batch_size(10).linger(linger);
    let router = App::new().pubsub(pubsub.clone()).state(batches.clone()).route(route).build().unwrap();
    let task = start(&router).await;
    // One message: it waits its linger (it cannot come sooner: the linger starts once the
    // message is taken, after this publish), then goes alone.
    let published = std::time::Instant::now();
    pubsub.publish(&input, Message::new("1")).await.unwrap();
    wait_total(&batches, 1).await;
    assert!(
        published.elapsed() >= linger,
        "the batch went after {:?}, before its linger",
        published.elapsed()
    );
    assert_eq!(batches.lock().clone(), vec![vec![1]]);
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_comes_during_the_linger_joins_the_batch() {
    let pubsub = MemoryPubSub::new();
    let input = topic("batch-join");
    let batches: Batches = Arc::default();
    let route = Route::batch("record", &input, record).batch_size(10).linger(Duration::from_secs(2));
    let router = App::new().pubsub(pubsub.clone()).state(batches.clone()).route(route).build().unwrap();
    let task = start(&router).await;
    // "2" comes 50 ms after "1": within the linger, however late "1" was taken (the linger starts
    // then), so the two make one batch; a batch that did not wait would hold "1" alone.
    pubsub.publish(&input, Message::new("1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    pubsub.publish(&input, Message::new("2")).await.unwrap();
    wait_total(&batches, 2).await;
    assert_eq!(batches.lock().clone(), vec![vec![1, 2]]);
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_per_message_ack_nack_and_poison() {
    let pubsub = MemoryPubSub::new();
    let input = topic("batch-outcomes");
    let mut poisoned = pubsub.subscribe("millstream.poison", SubscribeOptions::group("check")).await.unwrap();
    let batches: Batches = Arc::default();
    let seen: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    // 3 fails once (transient), 4 for good; "x" does not decode.
    let check = {
        let seen = seen.clone();
        move |numbers: Vec<u64>, State(batches): State<Batches>| {
            let seen = seen.clone();
            async move {
                batches.lock().push(numbers.clone());
                let mut result = BatchResult::ok();
                for (i, n) in numbers.iter().enumerate() {
                    let times = {
                        let mut seen = seen.lock();
                        let times = seen.entry(*n).or_insert(0);
                        *times += 1;
                        *times
                    };
                    if *n == 3 && times == 1 {
                        result = result.fail(i, Error::msg("3 fails once"));
                    } else if *n == 4 {
                        result = result.fail(i, Error::permanent("4 is refused"));
                    }
                }
                result
            }
        }
    };
    let route = Route::batch("check", &input, check).batch_size(10).linger(Duration::from_millis(100));
    let router = App::new()
        .pubsub(pubsub.clone())
        .config(RouterConfig::default().nack_delay(Some(Duration::from_millis(10))))
        .state(batches.clone())
        .route(route)
        .build()
        .unwrap();
    let task = start(&router).await;
    let mut messages = numbers(1..=5);
    messages.insert(2, Message::new("x"));
    pubsub.publish_batch(&input, messages).await.unwrap();
    wait_total(&batches, 6).await; // 1, 2, 3, 4, 5, then 3 again

    let mut reasons = Vec::new();
    for _ in 0..2 {
        let message = next_message(&mut poisoned).await;
        let payload = String::from_utf8_lossy(message.payload()).into_owned();
        reasons.push((payload, message.metadata().get(poison::REASON).unwrap_or_default().to_owned()));
    }
    reasons.sort();
    assert_eq!(reasons[0].0, "4");
    assert!(reasons[0].1.contains("4 is refused"), "{reasons:?}");
    assert_eq!(reasons[1].0, "x");
    assert!(!reasons[1].1.is_empty(), "the decode error is the reason: {reasons:?}");
    stop(&router, task).await;
    let seen = seen.lock().clone();
    assert_eq!(
        seen,
        HashMap::from([(1, 1), (2, 1), (3, 2), (4, 1), (5, 1)]),
        "3 came back once, the rest were acked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_published_and_an_error_fails_the_whole_batch() {
    let pubsub = MemoryPubSub::new();
    let input = topic("batch-outputs");
    let output = topic("batch-outputs-out");
    let mut out = pubsub.subscribe(&output, SubscribeOptions::group("check")).await.unwrap();
    let calls = Arc::new(Mutex::new(0u32));
    let double = {
        let calls = calls.clone();
        move |numbers: Vec<u64>| {
            let calls = calls.clone();
            async move {
                let call = {
                    let mut calls = calls.lock();
                    *calls += 1;
                    *calls
                };
                if call == 1 {
                    return Err(Error::msg("the first batch fails"));
                }
                Ok(numbers.into_iter().map(|n| Json(n * 2)).collect::<Vec<_>>())
            }
        }
    };
    let route = Route::batch("double", &input, double).publish(&output).linger(Duration::from_millis(100));
    let router = App::new()
        .pubsub(pubsub.clone())
        .config(RouterConfig::default().nack_delay(Some(Duration::from_millis(10))))
        .route(route)
        .build()
        .unwrap();
    let task = start(&router).await;
    pubsub.publish_batch(&input, numbers(1..=4)).await.unwrap();
    let mut doubled = take(&mut out, 4).await;
    doubled.sort();
    assert_eq!(doubled, ["2", "4", "6", "8"], "after the failed batch, every message came again");
    stop(&router, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_in_progress_at_shutdown_is_finished() {
    let pubsub = MemoryPubSub::new();
    let input = topic("batch-shutdown");
    let batches: Batches = Arc::default();
    let started = Arc::new(tokio::sync::Notify::new());
    let slow = {
        let started = started.clone();
        move |numbers: Vec<u64>, State(batches): State<Batches>| {
            let started = started.clone();
            async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(200)).await;
                batches.lock().push(numbers);
            }
        }
    };
    // (The batch goes once it holds all three: no linger to wait, and no chance of a smaller one.)
    let route = Route::batch("slow", &input, slow).batch_size(3).linger(Duration::from_secs(60));
    let router = App::new().pubsub(pubsub.clone()).state(batches.clone()).route(route).build().unwrap();
    let task = start(&router).await;
    pubsub.publish_batch(&input, numbers(1..=3)).await.unwrap();
    within("the batch starts", started.notified()).await;
    stop(&router, task).await;
    assert_eq!(batches.lock().concat(), vec![1, 2, 3], "the batch was finished before the router stopped");
}

#[test]
fn misuse_is_refused_when_the_app_is_built() {
    async fn single(_n: u64) {}
    async fn batch(_n: Vec<u64>) {}
    let error = |route: Route| match App::new().pubsub(MemoryPubSub::new()).route(route).build() {
        Ok(_) => panic!("must not build"),
        Err(error) => error.to_string(),
    };
    let text = error(Route::new("single", "t", single).batch_size(10));
    assert!(text.contains("is not a batch handler"), "{text}");
    let text = error(Route::batch("batch", "t", batch).concurrency(2));
    assert!(text.contains("one batch at a time"), "{text}");
    let text = error(
        Route::batch("batch", "t", batch).layer(millstream::middleware::Timeout::new(Duration::from_secs(1))),
    );
    assert!(text.contains("middleware wraps one message at a time"), "{text}");
    let text = error(Route::batch("batch", "t", batch).retry_topics([Duration::from_secs(1)]));
    assert!(text.contains("not available to batch handlers"), "{text}");
    let text = error(Route::batch("batch", "t", batch).order_by_key());
    assert!(text.contains("orders by key"), "{text}");
}
