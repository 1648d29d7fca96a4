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

/// Rows of `topic` in the messages table.
async fn rows(pubsub: &SqlPubSub, prefix: &str, topic: &str) -> i64 {
    use millstream::pubsub::sql::sqlx;
    let count = format!("SELECT COUNT(*) FROM {prefix}messages WHERE topic = ");
    if let Some(pool) = pubsub.sqlite_pool() {
        return sqlx::query_scalar(&format!("{count}?")).bind(topic).fetch_one(pool).await.unwrap();
    }
    #[cfg(feature = "postgres")]
    if let Some(pool) = pubsub.postgres_pool() {
        return sqlx::query_scalar(&format!("{count}$1")).bind(topic).fetch_one(pool).await.unwrap();
    }
    #[cfg(feature = "mysql")]
    if let Some(pool) = pubsub.mysql_pool() {
        return sqlx::query_scalar(&format!("{count}?")).bind(topic).fetch_one(pool).await.unwrap();
    }
    unreachable!("one of the three databases")
}

/// Takes `n` deliveries from `sub`, checks they are `from..from + n` in order, acks each.
async fn consume(sub: &mut Subscription, from: usize, n: usize) {
    for i in from..from + n {
        let delivery = next(sub).await;
        assert_eq!(delivery.message().payload().as_ref(), format!("m{i}").as_bytes());
        delivery.ack().await.unwrap();
    }
}

/// Retention on a steady load: a sweep deletes what every group has acked and nothing a group has
/// not read; the table stops growing once every group keeps up.
async fn retention_case(pubsub: SqlPubSub, prefix: &str) {
    let topic = crate::common::topic("retention");
    let mut fast = pubsub.subscribe(&topic, SubscribeOptions::group("fast")).await.unwrap();
    let mut slow = pubsub.subscribe(&topic, SubscribeOptions::group("slow")).await.unwrap();
    let publish = |from: usize, n: usize| {
        let messages: Vec<_> = (from..from + n).map(|i| Message::new(format!("m{i}"))).collect();
        pubsub.publish_batch(&topic, messages)
    };
    // The slow group reads nothing yet: nothing may go, though the fast one acked it all.
    publish(0, 200).await.unwrap();
    consume(&mut fast, 0, 200).await;
    pubsub.sweep().await.unwrap();
    assert_eq!(rows(&pubsub, prefix, &topic).await, 200, "unread by `slow`: kept");
    consume(&mut slow, 0, 200).await;
    pubsub.sweep().await.unwrap();
    assert_eq!(rows(&pubsub, prefix, &topic).await, 0, "acked by every group: deleted");
    // A steady load: the table stays at most one round deep.
    let mut next_n = 200;
    for _ in 0..10 {
        publish(next_n, 50).await.unwrap();
        consume(&mut fast, next_n, 50).await;
        consume(&mut slow, next_n, 50).await;
        next_n += 50;
        pubsub.sweep().await.unwrap();
        assert_eq!(rows(&pubsub, prefix, &topic).await, 0);
    }
    // A group created now starts at the oldest message left; nothing is lost to it after that.
    publish(next_n, 5).await.unwrap();
    let mut late = pubsub.subscribe(&topic, SubscribeOptions::group("late")).await.unwrap();
    consume(&mut late, next_n, 5).await;
    drop((fast, slow, late));
    pubsub.delete_topics(std::slice::from_ref(&topic)).await.unwrap();
    Publisher::close(&pubsub).await.unwrap();
}

fn retention_config() -> SqlConfig {
    // Deleted as soon as every group has acked; tables of their own (other tests keep history).
    SqlConfig::default()
        .table_prefix("msret_")
        .retention(Some(Duration::ZERO))
        .poll_interval(Duration::from_millis(20))
        .max_connections(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_retention_deletes_only_what_every_group_acked() {
    let dir = temp_dir("retention");
    let pubsub = SqlPubSub::open_sqlite(dir.0.join("q.db"), retention_config()).await.unwrap();
    retention_case(pubsub, "msret_").await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_retention_deletes_only_what_every_group_acked() {
    let url = crate::support::sql::url("postgres");
    retention_case(SqlPubSub::connect(&url, retention_config()).await.unwrap(), "msret_").await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_retention_deletes_only_what_every_group_acked() {
    let url = crate::support::sql::url("mysql");
    retention_case(SqlPubSub::connect(&url, retention_config()).await.unwrap(), "msret_").await;
}

/// Messages younger than the retention stay, acked or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_young_messages() {
    let dir = temp_dir("young");
    let config = retention_config().retention(Some(Duration::from_secs(3600)));
    let pubsub = SqlPubSub::open_sqlite(dir.0.join("q.db"), config).await.unwrap();
    let mut sub = pubsub.subscribe("young", SubscribeOptions::group("g")).await.unwrap();
    pubsub.publish("young", Message::new("m0")).await.unwrap();
    consume(&mut sub, 0, 1).await;
    assert_eq!(pubsub.sweep().await.unwrap(), 0);
    assert_eq!(rows(&pubsub, "msret_", "young").await, 1);
    Publisher::close(&pubsub).await.unwrap();
}

/// The database kills the publisher's connections again and again (as a restart does) while 300
/// messages are published one by one: every publish returns `Ok` after its retries, and each
/// message is stored exactly once.
#[cfg(any(feature = "postgres", feature = "mysql"))]
async fn publish_retries_case(victim: Victim) {
    let config = retention_config().retention(None).table_prefix("msretry_");
    let pubsub = SqlPubSub::connect(&victim.url, config).await.unwrap();
    let topic = crate::common::topic("killed");
    pubsub.publish(&topic, Message::new("warm-up")).await.unwrap();
    let victim = std::sync::Arc::new(victim);
    let killer = ConnectionKiller::start(victim.clone());
    let total = 300;
    for i in 0..total {
        let id = format!("00000000-0000-7000-8000-{i:012}");
        let message = Message::new(format!("m{i}")).with_id(millstream::MessageId::parse(&id).unwrap());
        pubsub.publish(&topic, message).await.unwrap_or_else(|e| panic!("publish {i}: {e}"));
    }
    let killed = killer.stop().await;
    // The warm-up message is one of them.
    let (rows, unique) = victim.rows_and_ids("msretry_messages", &topic).await;
    eprintln!(
        "{} publish retries: {total} published, {killed} connections killed, {rows} rows, {unique} unique",
        victim.name()
    );
    assert!(killed > 0, "the test killed no connection");
    assert_eq!((rows, unique), (total + 1, total + 1), "each message stored exactly once");
    pubsub.delete_topics(std::slice::from_ref(&topic)).await.unwrap();
    Publisher::close(&pubsub).await.unwrap();
}

/// The database kills the consumer's connections again and again while it consumes 200
/// messages, acking each: acks are retried (and a retry whose first try went through is
/// recognised), so no message is delivered twice and none is lost. With `partitions` above 1,
/// the messages are keyed over 8 keys, so that every partition's stream meets the kills.
#[cfg(any(feature = "postgres", feature = "mysql"))]
async fn ack_retries_case(victim: Victim, partitions: u32) {
    use std::collections::HashMap;

    let config = retention_config().retention(None).table_prefix("msretry_").partitions(partitions);
    let publisher = SqlPubSub::connect(&victim.admin_url, config.clone()).await.unwrap();
    let consumer = SqlPubSub::connect(&victim.url, config).await.unwrap();
    let topic = crate::common::topic("ack-killed");
    let total = 200;
    let mut sub = consumer.subscribe(&topic, SubscribeOptions::group("g")).await.unwrap();
    let messages: Vec<_> =
        (0..total).map(|i| Message::new(format!("m{i}")).with_key(format!("k{}", i % 8))).collect();
    publisher.publish_batch(&topic, messages).await.unwrap();
    let victim = std::sync::Arc::new(victim);
    let killer = ConnectionKiller::start(victim.clone());
    let mut seen: HashMap<String, u32> = HashMap::new();
    let (mut ack_failures, mut read_errors) = (0, 0);
    while seen.len() < total {
        match within("the next delivery", sub.next()).await.expect("open") {
            Ok(delivery) => {
                *seen
                    .entry(String::from_utf8_lossy(delivery.message().payload()).into_owned())
                    .or_default() += 1;
                if let Err(error) = delivery.ack().await {
                    eprintln!("an ack failed: {error}");
                    ack_failures += 1;
                }
            }
            Err(_) => read_errors += 1,
        }
    }
    let killed = killer.stop().await;
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "{} ack retries: {total} consumed, {killed} connections killed, {read_errors} read errors \
         reported, {ack_failures} failed acks, {duplicates} duplicates",
        victim.name()
    );
    assert!(killed > 0, "the test killed no connection");
    assert_eq!((ack_failures, duplicates), (0, 0));
    drop(sub);
    publisher.delete_topics(std::slice::from_ref(&topic)).await.unwrap();
    Publisher::close(&publisher).await.unwrap();
    Publisher::close(&consumer).await.unwrap();
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_publish_retries_through_killed_connections() {
    publish_retries_case(Victim::postgres("msretry").await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_acks_retry_through_killed_connections() {
    ack_retries_case(Victim::postgres("msackretry").await, 1).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_partitioned_acks_retry_through_killed_connections() {
    ack_retries_case(Victim::postgres("mspartretry").await, 4).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_publish_retries_through_killed_connections() {
    publish_retries_case(Victim::mysql("msretry").await).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_acks_retry_through_killed_connections() {
    ack_retries_case(Victim::mysql("msackretry").await, 1).await;
}

/// A client of PostgreSQL or MariaDB whose connections another connection can find and kill.
#[cfg(any(feature = "postgres", feature = "mysql"))]
struct Victim {
    /// The URL the client connects with (it marks its connections).
    url: String,
    /// A URL whose connections are left alone.
    admin_url: String,
    admin: Admin,
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
enum Admin {
    /// Connections marked by `application_name`.
    #[cfg(feature = "postgres")]
    Postgres(millstream::pubsub::sql::sqlx::PgPool, String),
    /// Connections marked by their user (MariaDB has no per-connection name in its URL).
    #[cfg(feature = "mysql")]
    Mysql(millstream::pubsub::sql::sqlx::MySqlPool, String),
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl Victim {
    #[cfg(feature = "postgres")]
    async fn postgres(tag: &str) -> Victim {
        let app = format!("{tag}{}", std::process::id());
        let base = crate::support::sql::url("postgres");
        let separator = if base.contains('?') { '&' } else { '?' };
        let admin = millstream::pubsub::sql::sqlx::PgPool::connect(&base).await.unwrap();
        Victim {
            url: format!("{base}{separator}application_name={app}"),
            admin_url: base,
            admin: Admin::Postgres(admin, app),
        }
    }

    /// A user of its own (all rights on the test database) for the client's connections.
    #[cfg(feature = "mysql")]
    async fn mysql(tag: &str) -> Victim {
        use millstream::pubsub::sql::sqlx;
        // One user per test (not per process: users are not dropped, so they must not pile up).
        let user = tag.to_owned();
        let base = crate::support::sql::url("mysql");
        let admin = sqlx::MySqlPool::connect(&base).await.unwrap();
        let database: String = sqlx::query_scalar("SELECT DATABASE()").fetch_one(&admin).await.unwrap();
        for statement in [
            format!("CREATE USER IF NOT EXISTS '{user}'@'%'"),
            format!("GRANT ALL ON `{database}`.* TO '{user}'@'%'"),
        ] {
            sqlx::raw_sql(&statement).execute(&admin).await.unwrap();
        }
        let (scheme, rest) = base.split_once("://").expect("a mysql:// URL");
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        Victim { url: format!("{scheme}://{user}@{host}"), admin_url: base, admin: Admin::Mysql(admin, user) }
    }

    fn name(&self) -> &'static str {
        match &self.admin {
            #[cfg(feature = "postgres")]
            Admin::Postgres(..) => "postgres",
            #[cfg(feature = "mysql")]
            Admin::Mysql(..) => "mysql",
        }
    }

    /// Kills every connection of the client; how many.
    async fn kill_all(&self) -> i64 {
        use millstream::pubsub::sql::sqlx;
        match &self.admin {
            #[cfg(feature = "postgres")]
            Admin::Postgres(admin, app) => sqlx::query_scalar(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(app)
            .fetch_one(admin)
            .await
            .unwrap(),
            #[cfg(feature = "mysql")]
            Admin::Mysql(admin, user) => {
                let ids: Vec<i64> =
                    sqlx::query_scalar("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?")
                        .bind(user)
                        .fetch_all(admin)
                        .await
                        .unwrap();
                let mut killed = 0;
                for id in ids {
                    // Gone already (it ended by itself) is fine.
                    if sqlx::raw_sql(&format!("KILL CONNECTION {id}")).execute(admin).await.is_ok() {
                        killed += 1;
                    }
                }
                killed
            }
        }
    }

    /// Rows of `topic` in `table`, and distinct message ids among them.
    async fn rows_and_ids(&self, table: &str, topic: &str) -> (i64, i64) {
        use millstream::pubsub::sql::sqlx;
        let count = format!("SELECT COUNT(*), COUNT(DISTINCT id) FROM {table} WHERE topic = ");
        match &self.admin {
            #[cfg(feature = "postgres")]
            Admin::Postgres(admin, _) => {
                sqlx::query_as(&format!("{count}$1")).bind(topic).fetch_one(admin).await.unwrap()
            }
            #[cfg(feature = "mysql")]
            Admin::Mysql(admin, _) => {
                sqlx::query_as(&format!("{count}?")).bind(topic).fetch_one(admin).await.unwrap()
            }
        }
    }
}

/// Kills, every 20 ms until stopped, every connection of a victim (what a database restart does
/// to a client: "terminating connection due to administrator command", "Connection was killed").
#[cfg(any(feature = "postgres", feature = "mysql"))]
struct ConnectionKiller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<i64>,
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl ConnectionKiller {
    fn start(victim: std::sync::Arc<Victim>) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut killed = 0_i64;
                while !stop.load(Ordering::Acquire) {
                    killed += victim.kill_all().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                killed
            }
        });
        ConnectionKiller { stop, task }
    }

    /// Stops; how many connections it killed.
    async fn stop(self) -> i64 {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.task.await.unwrap()
    }
}
