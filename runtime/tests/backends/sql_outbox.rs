//! The SQL backend beyond the conformance suite: the outbox (publishing inside the caller's
//! transaction), schema creation on first use, batch reads across batch boundaries, attempts.
//! Against the real PostgreSQL and MariaDB here, and SQLite.
#![cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]

use std::time::Duration;

use millstream::{Message, Publisher, SqlConfig, SqlPubSub, SubscribeOptions, Subscriber, Subscription};

const TIMEOUT: Duration = Duration::from_secs(30);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

/// A fresh table prefix: the schema does not exist before the test and is created on first use.
fn config(prefix: &str) -> SqlConfig {
    SqlConfig::default().table_prefix(prefix).poll_interval(Duration::from_millis(20)).batch_size(7)
}

async fn next_text(sub: &mut Subscription) -> (String, u32, millstream::Delivery) {
    let delivery = tokio::time::timeout(TIMEOUT, sub.next())
        .await
        .expect("a delivery in time")
        .expect("open")
        .expect("ok");
    (String::from_utf8(delivery.message().payload().to_vec()).unwrap(), delivery.attempt(), delivery)
}

/// Batch reads: 50 messages read 7 at a time arrive in order, once each; a nack in the middle of
/// a batch redelivers that message (attempt 2) before the rest of the batch.
async fn batches_and_attempts(pubsub: &SqlPubSub) {
    let topic = unique("batches.");
    let mut sub = pubsub.subscribe(&topic, SubscribeOptions::group("g")).await.unwrap();
    let messages: Vec<_> = (0..50).map(|n| Message::new(format!("m{n}"))).collect();
    pubsub.publish_batch(&topic, messages).await.unwrap();
    for n in 0..50 {
        let (text, attempt, delivery) = next_text(&mut sub).await;
        assert_eq!((text.as_str(), attempt), (format!("m{n}").as_str(), 1));
        if n == 10 {
            delivery.nack().await.unwrap();
            let (text, attempt, delivery) = next_text(&mut sub).await;
            assert_eq!((text.as_str(), attempt), ("m10", 2), "the nacked message comes back first");
            delivery.ack().await.unwrap();
        } else {
            delivery.ack().await.unwrap();
        }
    }
    pubsub.delete_topics(&[topic]).await.unwrap();
}

/// Expands an outbox test for one database: a rolled-back transaction publishes nothing, a
/// committed one publishes its message together with the caller's own row.
macro_rules! outbox_test {
    ($name:ident, $feature:literal, $url:expr, $db:ty, $create:literal, $insert:literal, $count:literal) => {
        #[cfg(feature = $feature)]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let url: String = $url;
            let prefix = unique("msout_");
            let pubsub = SqlPubSub::connect(&url, config(&prefix)).await.expect("connect");
            let pool = sqlx::Pool::<$db>::connect(&url).await.expect("pool");
            let orders = format!("{prefix}orders");
            sqlx::query(&format!($create, orders)).execute(&pool).await.unwrap();

            let topic = unique("outbox.");
            // The first subscribe creates the schema (the prefix is new).
            let mut sub = pubsub.subscribe(&topic, SubscribeOptions::group("billing")).await.unwrap();

            // Rolled back: neither the row nor the message exists.
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(&format!($insert, orders)).bind(1_i64).execute(&mut *tx).await.unwrap();
            pubsub.publish_in(&mut *tx, &topic, vec![Message::new("order 1")]).await.unwrap();
            tx.rollback().await.unwrap();

            // Committed: both exist, the message is delivered.
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(&format!($insert, orders)).bind(2_i64).execute(&mut *tx).await.unwrap();
            pubsub.publish_in(&mut *tx, &topic, vec![Message::new("order 2")]).await.unwrap();
            tx.commit().await.unwrap();

            // In order: had "order 1" been published it would come first.
            let (text, _, delivery) = next_text(&mut sub).await;
            assert_eq!(text, "order 2", "the rolled-back message was never published");
            delivery.ack().await.unwrap();
            let rows: i64 = sqlx::query_scalar(&format!($count, orders)).fetch_one(&pool).await.unwrap();
            assert_eq!(rows, 1);

            // Outside any transaction, publish_in runs in a transaction of its own.
            let mut conn = pool.acquire().await.unwrap();
            pubsub.publish_in(&mut *conn, &topic, vec![Message::new("order 3")]).await.unwrap();
            drop(conn);
            let (text, _, delivery) = next_text(&mut sub).await;
            assert_eq!(text, "order 3");
            delivery.ack().await.unwrap();
            drop(sub);

            batches_and_attempts(&pubsub).await;

            Publisher::close(&pubsub).await.unwrap();
            Subscriber::close(&pubsub).await.unwrap();
            for table in ["orders", "topics", "messages", "groups"] {
                sqlx::query(&format!("DROP TABLE {prefix}{table}")).execute(&pool).await.unwrap();
            }
        }
    };
}

outbox_test!(
    postgres_outbox,
    "postgres",
    std::env::var("MILLSTREAM_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    sqlx::Postgres,
    "CREATE TABLE {} (id BIGINT PRIMARY KEY)",
    "INSERT INTO {} (id) VALUES ($1)",
    "SELECT COUNT(*) FROM {}"
);

outbox_test!(
    mysql_outbox,
    "mysql",
    std::env::var("MILLSTREAM_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
    sqlx::MySql,
    "CREATE TABLE {} (id BIGINT PRIMARY KEY) ENGINE=InnoDB",
    "INSERT INTO {} (id) VALUES (?)",
    "SELECT COUNT(*) FROM {}"
);

outbox_test!(
    sqlite_outbox,
    "sqlite",
    format!("sqlite:{}", std::env::temp_dir().join(format!("{}.db", unique("millstream-outbox-"))).display()),
    sqlx::Sqlite,
    "CREATE TABLE {} (id INTEGER PRIMARY KEY)",
    "INSERT INTO {} (id) VALUES (?)",
    "SELECT COUNT(*) FROM {}"
);

/// Publishing a PostgreSQL connection through a SQLite pub/sub is refused, not attempted.
#[cfg(all(feature = "sqlite", feature = "postgres"))]
#[tokio::test]
async fn outbox_refuses_another_database() {
    let path = std::env::temp_dir().join(format!("{}.db", unique("millstream-mismatch-")));
    let pubsub = SqlPubSub::open_sqlite(&path, SqlConfig::default()).await.unwrap();
    let url = std::env::var("MILLSTREAM_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let error = pubsub.publish_in(&mut *conn, "t", vec![Message::new("x")]).await.unwrap_err();
    assert_eq!(error.kind(), millstream::ErrorKind::Config);
    let _ = std::fs::remove_file(&path);
}

/// The outbox with nothing but millstream as a dependency: the pool comes from the pub/sub and
/// sqlx from millstream's re-export.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_outbox_with_the_pubsubs_own_pool() {
    use millstream::pubsub::sql::sqlx;
    let dir = std::env::temp_dir().join(unique("outbox-pool-"));
    std::fs::create_dir_all(&dir).unwrap();
    let pubsub = SqlPubSub::open_sqlite(dir.join("db.sqlite"), config("op_")).await.unwrap();
    let pool = pubsub.sqlite_pool().expect("a SQLite pub/sub has a SQLite pool").clone();
    sqlx::query("CREATE TABLE stock (sku TEXT PRIMARY KEY, qty INTEGER)").execute(&pool).await.unwrap();
    let topic = unique("stock.");
    let mut sub = pubsub.subscribe(&topic, SubscribeOptions::group("g")).await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO stock VALUES ('tea', 3)").execute(&mut *tx).await.unwrap();
    pubsub.publish_in(&mut *tx, &topic, vec![Message::new("tea")]).await.unwrap();
    tx.commit().await.unwrap();

    let (text, _, delivery) = next_text(&mut sub).await;
    assert_eq!(text, "tea");
    delivery.ack().await.unwrap();
    Publisher::close(&pubsub).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
