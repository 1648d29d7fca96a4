//! The Redis stores against a real server (127.0.0.1:6379; override with
//! `MILLSTREAM_REDIS_URL`): the `DedupStore` contract, keys shared between connections, and a
//! router that handles a repeated message once; the `AttemptStore` contract and counts shared
//! between connections.
//!
//! Every test uses its own key prefix (process id and clock), so tests can run in parallel and
//! again; keys are deleted at the end, and expire by themselves if a test fails first.
#![cfg(all(feature = "conformance", feature = "redis"))]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{flaky, topic, within, Event, Recording};
use millstream::conformance::{check_attempt_store, check_dedup_store};
use millstream::middleware::{AttemptStore, DedupStore, Deduplicator, RedisAttemptStore, RedisDedupStore};
use millstream::{App, Router};
use millstream::{Message, Publisher, Route};

fn url() -> String {
    std::env::var("MILLSTREAM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix no other test or run uses.
fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos();
    format!("millstream-test:{test}:{}:{nanos}:", std::process::id())
}

async fn store(prefix: &str) -> RedisDedupStore {
    within("connect to Redis", RedisDedupStore::connect(&url()))
        .await
        .expect("Redis at MILLSTREAM_REDIS_URL or 127.0.0.1:6379")
        .with_prefix(prefix.to_owned())
}

/// A plain connection of the test's own, to look at the server directly.
async fn raw() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url()).unwrap();
    within("raw connection", client.get_multiplexed_async_connection()).await.unwrap()
}

/// The keys under `prefix` (the prefixes here hold no glob characters).
async fn keys_under(prefix: &str) -> Vec<String> {
    let mut connection = raw().await;
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// The milliseconds `key` has left.
async fn pttl(key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(&mut raw().await).await.unwrap()
}

/// Deletes this test's keys.
async fn cleanup(prefix: &str) {
    let keys = keys_under(prefix).await;
    if !keys.is_empty() {
        let _: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut raw().await).await.unwrap();
    }
    assert!(keys_under(prefix).await.is_empty(), "keys under {prefix} left behind");
}

async fn start(router: &Router) -> tokio::task::JoinHandle<millstream::Result<()>> {
    let task = tokio::spawn({
        let router = router.clone();
        async move { router.run().await }
    });
    within("router running", router.running()).await;
    task
}

async fn stop(router: &Router, task: tokio::task::JoinHandle<millstream::Result<()>>) {
    router.shutdown();
    within("router stops", task).await.unwrap().unwrap();
}

fn acks(events: &[Event]) -> usize {
    events.iter().filter(|e| matches!(e, Event::Acked { .. })).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_keeps_the_contract() {
    let prefix = unique_prefix("contract");
    check_dedup_store(Arc::new(store(&prefix).await), "contract").await.unwrap();
    cleanup(&prefix).await;
}

async fn attempt_store(prefix: &str) -> RedisAttemptStore {
    within("connect to Redis", RedisAttemptStore::connect(&url()))
        .await
        .expect("Redis at MILLSTREAM_REDIS_URL or 127.0.0.1:6379")
        .with_prefix(prefix.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_attempt_store_keeps_the_contract() {
    let prefix = unique_prefix("attempts-contract");
    check_attempt_store(Arc::new(attempt_store(&prefix).await), "contract").await.unwrap();
    cleanup(&prefix).await;
}

/// Two connections (two processes) count the same deliveries, under one prefixed key that
/// expires with its window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_connections_share_attempt_counts() {
    let prefix = unique_prefix("attempts-shared");
    let (here, there) = (attempt_store(&prefix).await, attempt_store(&prefix).await);
    let window = Duration::from_secs(30);
    assert_eq!(here.record("h:order-1", window).await.unwrap(), 1);
    assert_eq!(there.record("h:order-1", window).await.unwrap(), 2);
    assert_eq!(keys_under(&prefix).await, vec![format!("{prefix}h:order-1")], "one key, prefixed");
    let left = pttl(&format!("{prefix}h:order-1")).await;
    assert!((1..=30_000).contains(&left), "PTTL {left}");
    there.forget("h:order-1").await.unwrap();
    assert_eq!(here.record("h:order-1", window).await.unwrap(), 1, "forgotten through the other one");
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_connections_share_keys() {
    let prefix = unique_prefix("shared");
    let window = Duration::from_secs(60);
    // Two stores, each with its own connection manager: what two processes would have.
    let (here, there) = (store(&prefix).await, store(&prefix).await);
    let elsewhere = store(&unique_prefix("other")).await;

    assert!(here.insert_if_new("order-1", window).await.unwrap());
    assert!(!there.insert_if_new("order-1", window).await.unwrap(), "seen through another connection");
    assert!(elsewhere.insert_if_new("order-1", window).await.unwrap(), "another prefix is apart");
    assert_eq!(keys_under(&prefix).await, vec![format!("{prefix}order-1")], "one key, prefixed");

    there.remove("order-1").await.unwrap();
    assert!(here.insert_if_new("order-1", window).await.unwrap(), "forgotten through the other one");
    assert!(!there.insert_if_new("order-1", window).await.unwrap());

    cleanup(&prefix).await;
    cleanup(elsewhere.prefix()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_does_not_extend_the_window() {
    let prefix = unique_prefix("window");
    let store = store(&prefix).await;
    let key = format!("{prefix}k");

    assert!(store.insert_if_new("k", Duration::from_secs(30)).await.unwrap());
    let first = pttl(&key).await;
    assert!((1..=30_000).contains(&first), "PTTL {first}");
    // A duplicate with a much longer window leaves the expiry as it was.
    assert!(!store.insert_if_new("k", Duration::from_secs(3600)).await.unwrap());
    let after = pttl(&key).await;
    assert!((1..=first).contains(&after), "PTTL went from {first} to {after}");

    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reconnects_after_its_connection_is_killed() {
    let prefix = unique_prefix("reconnect");
    let client = redis::Client::open(url()).unwrap();
    let mut manager = within("connection manager", redis::aio::ConnectionManager::new(client)).await.unwrap();
    let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut manager).await.unwrap();
    let store = RedisDedupStore::new(manager).with_prefix(prefix.clone());
    let window = Duration::from_secs(60);
    assert!(store.insert_if_new("before", window).await.unwrap());

    // The server drops this store's connection (only this one: other tests are unaffected).
    let killed: i64 =
        redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(&mut raw().await).await.unwrap();
    assert_eq!(killed, 1);

    // An operation may fail while the manager notices and reconnects; one soon succeeds.
    let deadline = tokio::time::Instant::now() + crate::common::TIMEOUT;
    let fresh = loop {
        match store.insert_if_new("after", window).await {
            Ok(fresh) => break fresh,
            Err(error) => {
                assert_eq!(error.kind(), millstream::ErrorKind::Backend, "{error}");
                assert!(!error.is_permanent());
                assert!(tokio::time::Instant::now() < deadline, "never reconnected: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(fresh);
    assert!(!store.insert_if_new("before", window).await.unwrap(), "keys outlive the connection");
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_handles_a_message_published_twice_once() {
    let prefix = unique_prefix("router");
    let rec = Recording::new();
    let input = topic("dedup-redis");
    let calls = Arc::new(AtomicU32::new(0));
    let dedup = Deduplicator::new(Duration::from_secs(60)).store(Arc::new(store(&prefix).await));
    let router = App::new()
        .pubsub(rec.clone())
        .route(Route::new("once", &input, flaky(calls.clone(), 0)).layer(dedup))
        .build()
        .unwrap();
    let task = start(&router).await;

    let message = Message::new("{}");
    let id = message.id().to_string();
    rec.inner.publish(&input, message.clone()).await.unwrap();
    rec.inner.publish(&input, message).await.unwrap();
    rec.log.wait_for("2 acks", |ev| acks(ev) == 2).await;
    stop(&router, task).await;

    assert_eq!(calls.load(Ordering::SeqCst), 1, "the second copy was skipped");
    assert_eq!(rec.log.count(|e| matches!(e, Event::Nacked { .. })), 0);
    assert_eq!(keys_under(&prefix).await, vec![format!("{prefix}{id}")], "the key is in Redis");
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_sharing_redis_handle_a_message_once_and_retry_failures() {
    let prefix = unique_prefix("routers");
    let input = topic("dedup-redis-shared");
    let calls = Arc::new(AtomicU32::new(0));
    // Two routers over separate pub/subs and separate connections, as two processes would be;
    // the first handler call fails, so its key is forgotten and a later copy goes through.
    let mut routers = Vec::new();
    for _ in 0..2 {
        let rec = Recording::new();
        let dedup = Deduplicator::new(Duration::from_secs(60)).store(Arc::new(store(&prefix).await));
        let router = App::new()
            .pubsub(rec.clone())
            .route(Route::new("shared", &input, flaky(calls.clone(), 1)).layer(dedup))
            .build()
            .unwrap();
        let task = start(&router).await;
        routers.push((rec, router, task));
    }

    let message = Message::new("{}");
    for (rec, _, _) in &routers {
        rec.inner.publish(&input, message.clone()).await.unwrap();
        rec.inner.publish(&input, message.clone()).await.unwrap();
    }
    for (rec, _, _) in &routers {
        rec.log.wait_for("2 acks", |ev| acks(ev) == 2).await;
    }
    let mut nacks = 0;
    for (rec, router, task) in routers {
        stop(&router, task).await;
        nacks += rec.log.count(|e| matches!(e, Event::Nacked { .. }));
    }

    assert_eq!(calls.load(Ordering::SeqCst), 2, "one failure, then one success across both routers");
    assert_eq!(nacks, 1, "only the failed attempt was redelivered");
    cleanup(&prefix).await;
}
