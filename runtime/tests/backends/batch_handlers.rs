//! Batch handlers on real brokers: NATS JetStream (batches gathered from its pulls; a message
//! failed in a batch is nacked and comes again in a later one; every message handled, the rest
//! once) and SQLite (a strict-order backend: batches of one, in order, without waiting a linger).
#![cfg(any(feature = "nats", feature = "sqlite"))]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use millstream::{App, BatchResult, Error, Message, Publisher, Route, RouterConfig, State, Subscriber};
use parking_lot::Mutex;

use crate::common::{start, stop, unique, within};

/// Every batch the handler got.
type Batches = Arc<Mutex<Vec<Vec<u64>>>>;

/// Records the batch; fails 7 (transiently) the first time it sees it.
async fn record(numbers: Vec<u64>, State(batches): State<Batches>) -> BatchResult {
    let mut result = BatchResult::ok();
    let mut batches = batches.lock();
    let seen_seven = batches.iter().flatten().any(|n| *n == 7);
    for (i, n) in numbers.iter().enumerate() {
        if *n == 7 && !seen_seven {
            result = result.fail(i, Error::msg("7 fails once"));
        }
    }
    batches.push(numbers);
    result
}

async fn wait_for(batches: &Batches, done: impl Fn(&[Vec<u64>]) -> bool) {
    within("batches", async {
        while !done(&batches.lock()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// How many times each number was handled.
fn counts(batches: &[Vec<u64>]) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for n in batches.iter().flatten() {
        *counts.entry(*n).or_insert(0) += 1;
    }
    counts
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_on_nats_handle_every_message_and_redeliver_a_failed_one() {
    use millstream::{NatsConfig, NatsPubSub};

    let _lock = crate::support::nats::shared().await;
    let url = std::env::var("MILLSTREAM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let config = NatsConfig::default().stream_prefix("MSTEST_").ack_wait(Duration::from_secs(5));
    let nats = NatsPubSub::connect(&url, config).await.expect("connect");
    let topic = unique("batch-nats.");
    let batches: Batches = Arc::default();
    let route = Route::batch("record", &topic, record).batch_size(50).linger(Duration::from_millis(200));
    let router = App::new()
        .pubsub(nats.clone())
        .config(RouterConfig::default().nack_delay(Some(Duration::from_millis(50))))
        .state(batches.clone())
        .route(route)
        .build()
        .unwrap();
    let task = start(&router).await;
    let messages: Vec<Message> = (1..=300u64).map(|n| Message::new(n.to_string())).collect();
    nats.publish_batch(&topic, messages).await.unwrap();
    wait_for(&batches, |b| counts(b).len() == 300 && counts(b)[&7] == 2).await;
    stop(&router, task).await;
    let batches = batches.lock().clone();
    let counts = counts(&batches);
    assert!(counts.iter().all(|(n, c)| *c == if *n == 7 { 2 } else { 1 }), "each message once, 7 twice");
    assert!(batches.iter().all(|b| b.len() <= 50));
    assert!(batches.iter().any(|b| b.len() > 1), "messages were gathered into batches");
    within("delete the topic", nats.delete_topic(&topic)).await.unwrap();
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_on_sqlite_hold_one_message_each_in_order() {
    use millstream::{SqlConfig, SqlPubSub};

    let dir = std::env::temp_dir().join(unique("millstream-batch-"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.join("app.db").display());
    let sql = SqlPubSub::connect(&url, SqlConfig::default().poll_interval(Duration::from_millis(20)))
        .await
        .unwrap();
    let topic = unique("batch-sqlite.");
    let batches: Batches = Arc::default();
    // A linger far longer than the test: a strict-order backend must not wait it.
    let route = Route::batch("record", &topic, record).batch_size(50).linger(Duration::from_secs(60));
    let router = App::new()
        .pubsub(sql.clone())
        .config(RouterConfig::default().nack_delay(Some(Duration::from_millis(20))))
        .state(batches.clone())
        .route(route)
        .build()
        .unwrap();
    let task = start(&router).await;
    let messages: Vec<Message> = (1..=20u64).map(|n| Message::new(n.to_string())).collect();
    sql.publish_batch(&topic, messages).await.unwrap();
    wait_for(&batches, |b| counts(b).len() == 20).await;
    stop(&router, task).await;
    let batches = batches.lock().clone();
    assert!(batches.iter().all(|b| b.len() == 1), "one message per batch: {batches:?}");
    let order: Vec<u64> = batches.concat();
    let mut expected: Vec<u64> = (1..=20).collect();
    expected.insert(7, 7); // 7 failed, and came back at once: strict order
    assert_eq!(order, expected);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With partitions (`SqlConfig::partitions`), a batch gathers the head of each partition: several
/// messages at once, each key still in order, 7 redelivered after its failure.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_on_partitioned_sqlite_gather_one_message_per_partition() {
    use millstream::{SqlConfig, SqlPubSub};

    let dir = std::env::temp_dir().join(unique("millstream-batch-parts-"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.join("app.db").display());
    let config = SqlConfig::default().poll_interval(Duration::from_millis(20)).partitions(4);
    let sql = SqlPubSub::connect(&url, config).await.unwrap();
    let topic = unique("batch-sqlite-parts.");
    let batches: Batches = Arc::default();
    let route = Route::batch("record", &topic, record).batch_size(50).linger(Duration::from_millis(200));
    let router = App::new()
        .pubsub(sql.clone())
        .config(RouterConfig::default().nack_delay(Some(Duration::from_millis(20))))
        .state(batches.clone())
        .route(route)
        .build()
        .unwrap();
    let task = start(&router).await;
    // Four keys: n % 4.
    let messages: Vec<Message> =
        (1..=40u64).map(|n| Message::new(n.to_string()).with_key(format!("k{}", n % 4))).collect();
    sql.publish_batch(&topic, messages).await.unwrap();
    wait_for(&batches, |b| counts(b).len() == 40 && counts(b)[&7] == 2).await;
    stop(&router, task).await;
    let batches = batches.lock().clone();
    assert!(batches.iter().all(|b| b.len() <= 4), "at most one message per partition: {batches:?}");
    assert!(batches.iter().any(|b| b.len() > 1), "partitions were read together: {batches:?}");
    for key in 0..4 {
        let order: Vec<u64> = batches.concat().into_iter().filter(|n| n % 4 == key).collect();
        let mut expected: Vec<u64> = (1..=40).filter(|n| n % 4 == key).collect();
        if key == 3 {
            expected.insert(1, 7); // 7 failed, and came back before the rest of its key
        }
        assert_eq!(order, expected, "key {key} in order");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
