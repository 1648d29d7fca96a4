//! The outbox forwarder: messages written with `publish_in` in SQLite transactions relayed to
//! another backend (in memory, and NATS), exactly those of committed transactions, in order,
//! with their ids; a target that fails for a while loses and reorders nothing; a forwarder
//! stopped mid-stream and started again, and two forwarders at once, deliver each message once.
#![cfg(feature = "sqlite")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use millstream::pubsub::OpFuture;
use millstream::router::{Forwarder, RouterConfig};
use millstream::{
    App, MemoryPubSub, Message, MessageId, Publisher, SqlConfig, SqlPubSub, SubscribeOptions, Subscriber,
};

use crate::common::{next_message, start, stop, unique, within};

struct Outbox {
    pubsub: SqlPubSub,
    pool: sqlx::SqlitePool,
    dir: std::path::PathBuf,
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn outbox() -> Outbox {
    let dir = std::env::temp_dir().join(unique("millstream-forwarder-"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = outbox_url(&dir);
    let pubsub = SqlPubSub::connect(&url, sql_config()).await.unwrap();
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    Outbox { pubsub, pool, dir }
}

fn sql_config() -> SqlConfig {
    SqlConfig::default().poll_interval(Duration::from_millis(20)).ack_deadline(Duration::from_secs(2))
}

fn outbox_url(dir: &std::path::Path) -> String {
    format!("sqlite:{}?mode=rwc", dir.join("outbox.db").display())
}

/// Writes `texts` to `topic` through the outbox, in one transaction committed or rolled back;
/// returns the messages' ids.
async fn write(
    outbox: &Outbox,
    topic: &str,
    texts: impl Iterator<Item = String>,
    commit: bool,
) -> Vec<MessageId> {
    let messages: Vec<Message> = texts.map(Message::new).collect();
    let ids = messages.iter().map(Message::id).collect();
    let mut tx = outbox.pool.begin().await.unwrap();
    outbox.pubsub.publish_in(&mut *tx, topic, messages).await.unwrap();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
    ids
}

/// An app forwarding `topic` of `source` to `{topic}.out` on `target`. (It closes both when it
/// stops, as an app closes every backend it runs on.)
fn app(source: SqlPubSub, target: Arc<dyn Publisher>, topic: &str) -> App {
    let forwarder = Forwarder::new(Arc::new(source), target)
        .topic_to(topic, format!("{topic}.out"))
        .retry_delay(Duration::from_millis(50));
    App::new().pubsub(MemoryPubSub::new()).forward(forwarder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_exactly_the_committed_messages_in_order_with_their_ids() {
    let outbox = outbox().await;
    let target = MemoryPubSub::new();
    let topic = unique("fwd.");
    let mut out = target.subscribe(&format!("{topic}.out"), SubscribeOptions::group("reader")).await.unwrap();
    let router = app(outbox.pubsub.clone(), Arc::new(target.clone()), &topic).build().unwrap();
    let task = start(&router).await;

    let mut expected = write(&outbox, &topic, (0..30).map(|n| format!("a{n}")), true).await;
    write(&outbox, &topic, (0..10).map(|n| format!("rolled back {n}")), false).await;
    expected.extend(write(&outbox, &topic, (30..50).map(|n| format!("a{n}")), true).await);
    for (n, id) in expected.iter().enumerate() {
        let message = next_message(&mut out).await;
        assert_eq!(
            (String::from_utf8_lossy(message.payload()).into_owned(), message.id()),
            (format!("a{n}"), *id)
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), out.next()).await.is_err(),
        "a rolled-back message came"
    );
    stop(&router, task).await;
}

/// A target whose first `failures` publishes fail (a broker that is away).
struct Failing {
    inner: MemoryPubSub,
    failures: AtomicU32,
}

impl Publisher for Failing {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        if self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            return OpFuture::ready(Err(millstream::Error::backend(std::io::Error::other("broker away"))));
        }
        self.inner.publish(topic, message)
    }

    fn close(&self) -> OpFuture<'_> {
        OpFuture::ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_delays_but_loses_and_reorders_nothing() {
    let outbox = outbox().await;
    let target = MemoryPubSub::new();
    let topic = unique("fwd-fail.");
    let mut out = target.subscribe(&format!("{topic}.out"), SubscribeOptions::group("reader")).await.unwrap();
    let failing = Arc::new(Failing { inner: target.clone(), failures: AtomicU32::new(0) });
    let router = app(outbox.pubsub.clone(), failing.clone(), &topic).build().unwrap();
    let task = start(&router).await;
    write(&outbox, &topic, (0..5).map(|n| format!("m{n}")), true).await;
    for n in 0..5 {
        assert_eq!(next_message(&mut out).await.payload().as_ref(), format!("m{n}").as_bytes());
    }
    failing.failures.store(4, Ordering::SeqCst);
    write(&outbox, &topic, (5..20).map(|n| format!("m{n}")), true).await;
    for n in 5..20 {
        assert_eq!(next_message(&mut out).await.payload().as_ref(), format!("m{n}").as_bytes());
    }
    assert_eq!(failing.failures.load(Ordering::SeqCst), 0);
    stop(&router, task).await;
}

/// On NATS: a forwarder stopped mid-stream and another started, then two at once: every message
/// reaches the NATS topic once, in order.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarders_restarted_and_side_by_side_deliver_each_message_once_to_nats() {
    use millstream::{NatsConfig, NatsPubSub};

    let _lock = crate::support::nats::shared().await;
    let url = std::env::var("MILLSTREAM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let nats =
        NatsPubSub::connect(&url, NatsConfig::default().stream_prefix("MSTEST_")).await.expect("connect");
    let outbox = outbox().await;
    let topic = unique("fwd-nats.");
    let target_topic = format!("{topic}.out");
    let mut out = nats.subscribe(&target_topic, SubscribeOptions::group("reader")).await.unwrap();
    let config = RouterConfig::default().close_timeout(Duration::from_secs(5));

    // Each forwarder is a process of its own: its own connections to SQLite and NATS.
    let forwarder = || async {
        let source = SqlPubSub::connect(&outbox_url(&outbox.dir), sql_config()).await.unwrap();
        let target = NatsPubSub::connect(&url, NatsConfig::default().stream_prefix("MSTEST_")).await.unwrap();
        app(source, Arc::new(target), &topic).config(config.clone()).build().unwrap()
    };
    let ids = write(&outbox, &topic, (0..200).map(|n| format!("m{n}")), true).await;
    // The first forwarder relays a part, and stops.
    let first = forwarder().await;
    let task = start(&first).await;
    let mut got: Vec<MessageId> = Vec::new();
    while got.len() < 50 {
        got.push(next_message(&mut out).await.id());
    }
    stop(&first, task).await;
    // Two forwarders at once take over (one holds the topic's lease), with more messages coming.
    let ids_later = write(&outbox, &topic, (200..300).map(|n| format!("m{n}")), true).await;
    let (second, third) = (forwarder().await, forwarder().await);
    let (task2, task3) = (start(&second).await, start(&third).await);
    while got.len() < 300 {
        got.push(next_message(&mut out).await.id());
    }
    let expected: Vec<MessageId> = ids.into_iter().chain(ids_later).collect();
    assert_eq!(got, expected, "every message once, in order");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), out.next()).await.is_err(),
        "a message came twice"
    );
    stop(&second, task2).await;
    stop(&third, task3).await;
    drop(out);
    within("delete the topic", nats.delete_topic(&target_topic)).await.unwrap();
}
