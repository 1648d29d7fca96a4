//! Partitioned SQL topics (`SqlConfig::partitions`): a group spreads across subscriptions of
//! several "processes" (pub/subs with their own consumer names), hands a leaving member's
//! partitions over, keeps each key's order, and refuses a partition count the database does not
//! record. On SQLite (a file per test), PostgreSQL and MariaDB.
#![cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use millstream::{
    ErrorKind, Message, Publisher, SqlConfig, SqlPubSub, SubscribeOptions, Subscriber, Subscription,
};
use parking_lot::Mutex;
use tokio::sync::Notify;

const TIMEOUT: Duration = Duration::from_secs(60);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

/// A "process": its own consumer name, four partitions, a short ack deadline (so membership
/// beats every second) and quick polls.
fn config(consumer: &str, partitions: u32) -> SqlConfig {
    SqlConfig::default()
        .table_prefix("msparts_")
        .consumer(consumer)
        .partitions(partitions)
        .ack_deadline(Duration::from_secs(3))
        .poll_interval(Duration::from_millis(20))
        .max_connections(4)
}

/// Where a test's databases are: a SQLite file, or the PostgreSQL server.
#[derive(Clone)]
enum Db {
    #[cfg(feature = "sqlite")]
    Sqlite(std::path::PathBuf),
    #[cfg(feature = "postgres")]
    Postgres,
    #[cfg(feature = "mysql")]
    MySql,
}

impl Db {
    #[cfg(feature = "sqlite")]
    fn sqlite(name: &str) -> Db {
        let dir = std::env::temp_dir().join(unique(&format!("millstream-{name}-")));
        std::fs::create_dir_all(&dir).unwrap();
        Db::Sqlite(dir.join("queue.db"))
    }

    async fn open(&self, consumer: &str, partitions: u32) -> millstream::Result<SqlPubSub> {
        let config = config(consumer, partitions);
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(path) => SqlPubSub::open_sqlite(path, config).await,
            #[cfg(feature = "postgres")]
            Db::Postgres => {
                let url = std::env::var("MILLSTREAM_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
                SqlPubSub::connect(&url, config).await
            }
            #[cfg(feature = "mysql")]
            Db::MySql => {
                let url = std::env::var("MILLSTREAM_MYSQL_URL")
                    .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
                SqlPubSub::connect(&url, config).await
            }
        }
    }
}

/// Every message a consumer handled: its payload, and which consumer.
#[derive(Clone, Default)]
struct Seen {
    log: Arc<Mutex<Vec<(String, usize)>>>,
    changed: Arc<Notify>,
}

impl Seen {
    /// Reads `sub` as consumer `who`, acking each message (and noting it once acked), until the
    /// subscription ends.
    fn consume(&self, who: usize, mut sub: Subscription) -> tokio::task::JoinHandle<()> {
        let seen = self.clone();
        tokio::spawn(async move {
            while let Some(item) = sub.next().await {
                let Ok(delivery) = item else { continue };
                let text = String::from_utf8(delivery.message().payload().to_vec()).unwrap();
                // Counted once acked: a message whose ack did not go through comes back.
                if delivery.ack().await.is_ok() {
                    seen.log.lock().push((text, who));
                    seen.changed.notify_waiters();
                }
            }
        })
    }

    async fn wait(&self, what: &str, done: impl Fn(&[(String, usize)]) -> bool) {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                let changed = self.changed.notified();
                if done(&self.log.lock()) {
                    return;
                }
                tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}; seen {} messages", self.log.lock().len()));
    }

    fn count_by(&self, who: usize) -> usize {
        self.log.lock().iter().filter(|(_, w)| *w == who).count()
    }
}

/// Two processes of one group each get a share of a stream of messages without keys, every
/// message is handled once, and when one process leaves, the other takes all its partitions.
async fn spread_and_hand_over(db: Db) {
    let topic = unique("parts.spread.");
    let (a, b) = (db.open("proc-a", 4).await.unwrap(), db.open("proc-b", 4).await.unwrap());
    let seen = Seen::default();
    let consumer_a = seen.consume(0, a.subscribe(&topic, SubscribeOptions::group("g")).await.unwrap());
    let sub_b = b.subscribe(&topic, SubscribeOptions::group("g")).await.unwrap();
    let consumer_b = seen.consume(1, sub_b);
    // Publish until both have had a share (the partitions are divided within a beat, 1 s).
    let mut published = 0;
    tokio::time::timeout(TIMEOUT, async {
        while seen.count_by(0) < 20 || seen.count_by(1) < 20 {
            a.publish(&topic, Message::new(format!("m{published}"))).await.unwrap();
            published += 1;
            if published % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("both members got a share: a {}, b {}", seen.count_by(0), seen.count_by(1)));
    seen.wait("every message", |log| log.len() >= published).await;
    // B leaves: its partitions go to A, which then gets everything.
    consumer_b.abort();
    let _ = consumer_b.await;
    Subscriber::close(&b).await.unwrap();
    let before = seen.log.lock().len();
    for n in 0..40 {
        a.publish(&topic, Message::new(format!("after{n}"))).await.unwrap();
    }
    seen.wait("every message after B left", |log| log.len() >= before + 40).await;
    let log = seen.log.lock().clone();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (text, _) in &log {
        *counts.entry(text.as_str()).or_default() += 1;
    }
    assert_eq!(counts.len(), published + 40, "every message handled");
    assert!(counts.values().all(|c| *c == 1), "no message handled twice in a run without failures");
    assert!(log[before..].iter().all(|(_, who)| *who == 0), "after B left, A handled everything");
    consumer_a.abort();
    a.delete_topics(&[topic]).await.unwrap();
}

/// Messages with a key keep their order across processes: each key's messages arrive in the
/// order they were published, whichever member handles them.
async fn keys_keep_order(db: Db) {
    let topic = unique("parts.keys.");
    let (a, b) = (db.open("proc-a", 4).await.unwrap(), db.open("proc-b", 4).await.unwrap());
    let seen = Seen::default();
    let consumers = [
        seen.consume(0, a.subscribe(&topic, SubscribeOptions::group("g")).await.unwrap()),
        seen.consume(1, b.subscribe(&topic, SubscribeOptions::group("g")).await.unwrap()),
    ];
    let (keys, per_key) = (8, 30);
    for n in 0..per_key {
        let batch = (0..keys).map(|k| Message::new(format!("k{k}:{n}")).with_key(format!("k{k}"))).collect();
        b.publish_batch(&topic, batch).await.unwrap();
    }
    seen.wait("every keyed message", |log| log.len() >= keys * per_key).await;
    let mut next: HashMap<String, usize> = HashMap::new();
    for (text, _) in seen.log.lock().iter() {
        let (key, n) = text.split_once(':').unwrap();
        let expected = next.entry(key.to_owned()).or_default();
        assert_eq!(n.parse::<usize>().unwrap(), *expected, "key {key} in order");
        *expected += 1;
    }
    for consumer in consumers {
        consumer.abort();
    }
    a.delete_topics(&[topic]).await.unwrap();
}

/// A topic's partition count is recorded on its first use; another count is refused with a
/// `Config` error, and so is partitioning a topic that holds unpartitioned messages.
async fn counts_are_checked(db: Db) {
    let topic = unique("parts.count.");
    let four = db.open("proc-a", 4).await.unwrap();
    four.publish(&topic, Message::new("x")).await.unwrap();
    let one = db.open("proc-b", 1).await.unwrap();
    let error = one.publish(&topic, Message::new("y")).await.expect_err("a count of 1 is refused");
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    assert!(error.to_string().contains("4 partition"), "{error}");
    let two = db.open("proc-c", 2).await.unwrap();
    let Err(error) = two.subscribe(&topic, SubscribeOptions::group("g")).await else {
        panic!("a count of 2 is refused");
    };
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    let plain = unique("parts.plain.");
    one.publish(&plain, Message::new("z")).await.unwrap();
    let error =
        four.publish(&plain, Message::new("w")).await.expect_err("partitioning a used topic is refused");
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    // Deleting a partitioned topic removes its record: it may be used with another count then.
    one.delete_topics(&[topic.clone(), plain]).await.unwrap();
    one.publish(&topic, Message::new("again")).await.unwrap();
    one.delete_topics(&[topic]).await.unwrap();
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_spreads_and_hands_over() {
        spread_and_hand_over(Db::sqlite("spread")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_keep_their_order() {
        keys_keep_order(Db::sqlite("keys")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partition_counts_are_checked() {
        counts_are_checked(Db::sqlite("counts")).await;
    }

    /// The outbox on a partitioned topic's first use, inside a transaction that already holds
    /// SQLite's write lock: the count is recorded on the caller's connection (a write on another
    /// would wait for that lock), and the messages of every partition arrive once it commits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_outbox_publishes_to_partitions_inside_a_transaction() {
        let db = Db::sqlite("outbox");
        let pubsub = db.open("proc-a", 4).await.unwrap();
        pubsub.ensure_schema().await.unwrap();
        let topic = unique("parts.outbox.");
        let pool = pubsub.sqlite_pool().unwrap().clone();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("CREATE TABLE IF NOT EXISTS stock (sku TEXT)").execute(&mut *tx).await.unwrap();
        let messages = (0..8).map(|n| Message::new(format!("m{n}")).with_key(format!("k{n}"))).collect();
        tokio::time::timeout(TIMEOUT, pubsub.publish_in(&mut *tx, &topic, messages))
            .await
            .expect("the outbox does not wait for its own transaction's lock")
            .unwrap();
        tx.commit().await.unwrap();
        let seen = Seen::default();
        let consumer = seen.consume(0, pubsub.subscribe(&topic, SubscribeOptions::group("g")).await.unwrap());
        seen.wait("the outbox's messages", |log| log.len() >= 8).await;
        let other = db.open("proc-b", 2).await.unwrap();
        let error = other.publish(&topic, Message::new("x")).await.expect_err("recorded with 4");
        assert_eq!(error.kind(), ErrorKind::Config, "{error}");
        consumer.abort();
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_spreads_and_hands_over() {
        spread_and_hand_over(Db::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_keep_their_order() {
        keys_keep_order(Db::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partition_counts_are_checked() {
        counts_are_checked(Db::Postgres).await;
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_spreads_and_hands_over() {
        spread_and_hand_over(Db::MySql).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_keep_their_order() {
        keys_keep_order(Db::MySql).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partition_counts_are_checked() {
        counts_are_checked(Db::MySql).await;
    }
}
