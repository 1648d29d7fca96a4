//! The SQL backend's leases under faults: a delivery's heartbeat keeps a handler slower than the
//! ack deadline from losing its message to another consumer, and stops after `max_hold`.
//! (A restarted consumer taking its leases back at once is in `sqlite_kill`.)
#![cfg(feature = "sqlite")]

use std::time::{Duration, Instant};

use millstream::{Message, Publisher, SqlConfig, SqlPubSub, SubscribeOptions, Subscriber, Subscription};

use crate::common::within;

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> Dir {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("millstream-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Dir(dir)
}

async fn next(sub: &mut Subscription) -> millstream::Delivery {
    within("a delivery", sub.next()).await.expect("open").expect("delivery")
}

/// A handler holds its message for 4 ack deadlines while a second member of the group waits: the
/// heartbeat keeps the lease, the other member gets nothing, and the late ack succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_slow_handlers_message() {
    let dir = temp_dir("heartbeat");
    let deadline = Duration::from_secs(2);
    let config = SqlConfig::default().ack_deadline(deadline).poll_interval(Duration::from_millis(20));
    let db = dir.0.join("q.db");
    let a = SqlPubSub::open_sqlite(&db, config.clone()).await.unwrap();
    let b = SqlPubSub::open_sqlite(&db, config).await.unwrap();
    let mut slow = a.subscribe("jobs", SubscribeOptions::group("workers")).await.unwrap();
    a.publish("jobs", Message::new("slow")).await.unwrap();
    let held = next(&mut slow).await;
    let mut other = b.subscribe("jobs", SubscribeOptions::group("workers")).await.unwrap();
    // Four deadlines: without renewals the lease would have run out three times over.
    let hold = deadline * 4;
    let started = Instant::now();
    match tokio::time::timeout(hold, other.next()).await {
        Err(_) => {}
        Ok(got) => panic!(
            "the other member got a delivery after {:?} while the slow one held it: {:?}",
            started.elapsed(),
            got.map(|d| d.map(|d| d.message().id()))
        ),
    }
    held.ack().await.expect("the slow handler's ack: its lease was kept");
    // And the group goes on.
    a.publish("jobs", Message::new("next")).await.unwrap();
    let next = tokio::select! {
        d = next(&mut slow) => d,
        d = next(&mut other) => d,
    };
    assert_eq!(next.message().payload().as_ref(), b"next");
    next.ack().await.unwrap();
    Publisher::close(&a).await.unwrap();
    Publisher::close(&b).await.unwrap();
}

/// Past `max_hold` the heartbeat stops: a hung handler's message goes to another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_stops_after_max_hold() {
    let dir = temp_dir("max-hold");
    let config = SqlConfig::default()
        .ack_deadline(Duration::from_millis(600))
        .max_hold(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(20));
    let db = dir.0.join("q.db");
    let a = SqlPubSub::open_sqlite(&db, config.clone()).await.unwrap();
    let b = SqlPubSub::open_sqlite(&db, config).await.unwrap();
    let mut hung = a.subscribe("jobs", SubscribeOptions::group("workers")).await.unwrap();
    a.publish("jobs", Message::new("hung")).await.unwrap();
    let held = next(&mut hung).await;
    let mut other = b.subscribe("jobs", SubscribeOptions::group("workers")).await.unwrap();
    let again = next(&mut other).await;
    assert_eq!(again.message().id(), held.message().id());
    assert_eq!(again.attempt(), 2);
    again.ack().await.unwrap();
    assert!(held.ack().await.is_err(), "the hung handler's late ack is reported");
    Publisher::close(&a).await.unwrap();
    Publisher::close(&b).await.unwrap();
}

/// A consumer name that backends could not use is refused when the pub/sub is opened.
#[tokio::test]
async fn a_bad_consumer_name_is_refused() {
    let dir = temp_dir("consumer-name");
    let error = SqlPubSub::open_sqlite(dir.0.join("q.db"), SqlConfig::default().consumer("node 1/a"))
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(error.kind(), millstream::ErrorKind::Config);
    assert!(error.to_string().contains("consumer name \"node 1/a\""), "{error}");
}
