//! The read statement's batches against each database: at most `batch_size` rows, and no more than
//! `batch_bytes` of payload unless one message alone is larger (then it comes on its own).

use std::time::Duration;

use super::config::SqlConfig;
use super::db::now_ms;
use super::ops::dispatch;
use super::pubsub::SqlPubSub;
use crate::message::Message;
use crate::pubsub::Publisher;

/// Payload sizes published, and the batches (by sequence number) a group reads them in with
/// `batch_size` 4 and `batch_bytes` 1000.
const SIZES: [usize; 11] = [300, 300, 300, 2000, 10, 10, 10, 10, 10, 0, 1500];
const BATCHES: [&[i64]; 5] = [&[1, 2, 3], &[4], &[5, 6, 7, 8], &[9, 10], &[11]];

fn config() -> SqlConfig {
    SqlConfig::default().table_prefix("msunit_").batch_size(4).batch_bytes(1000).max_connections(2)
}

fn topic(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("unit.{name}.{}.{nanos}", std::process::id())
}

/// Publishes [`SIZES`] to `topic`.
async fn publish(pubsub: &SqlPubSub, topic: &str) {
    let messages = SIZES.iter().map(|&size| Message::new(vec![b'x'; size])).collect();
    pubsub.publish_batch(topic, messages).await.expect("publish");
}

/// Reads `topic` as group `group`, batch by batch (claim, then ack the batch's last row), and
/// checks the batches against [`BATCHES`].
async fn check_batches(pubsub: &SqlPubSub, topic: &str, group: &str) {
    let inner = &pubsub.inner;
    let (q, owner) = (&inner.queries, "unit@owner/1");
    let lease = Duration::from_secs(30).as_millis() as i64;
    dispatch!(&inner.pool, (pool, ops) => ops::create_group(pool, q, topic, group, false).await)
        .expect("group");
    let (batch, bytes) = (inner.config.batch_size as i64, inner.config.batch_bytes as i64);
    let mut acked = 0;
    for expected in BATCHES {
        let now = now_ms();
        let claimed = dispatch!(&inner.pool, (pool, ops) => ops::claim(
            pool, q, topic, group, owner, now, now + lease, batch, bytes,
        ).await)
        .expect("claim")
        .expect("something to read");
        let (from, _, rows) = claimed;
        assert_eq!(from, acked);
        let seqs: Vec<i64> = rows.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, expected, "{:?}: batch after {acked}", pubsub.dialect());
        for (seq, message) in &rows {
            assert_eq!(message.payload().len(), SIZES[*seq as usize - 1], "payload of {seq}");
        }
        let last = *seqs.last().expect("a row");
        let moved = dispatch!(&inner.pool, (pool, ops) => ops::ack(
            pool, q, topic, group, owner, Some(owner), last, acked, 0, now + lease,
        ).await)
        .expect("ack");
        assert!(moved, "the ack moves the group");
        acked = last;
    }
    let now = now_ms();
    let rest = dispatch!(&inner.pool, (pool, ops) => ops::claim(
        pool, q, topic, group, owner, now, now + lease, batch, bytes,
    ).await)
    .expect("claim");
    assert!(rest.is_none(), "everything was read");
}

async fn close(pubsub: &SqlPubSub, topic: String) {
    pubsub.delete_topics(&[topic]).await.expect("cleanup");
    Publisher::close(pubsub).await.expect("close");
    crate::pubsub::Subscriber::close(pubsub).await.expect("close");
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_batches_are_bounded_by_bytes() {
    let path = std::env::temp_dir().join(format!("{}.db", topic("sqlite-batches")));
    let pubsub = SqlPubSub::open_sqlite(&path, config()).await.expect("open");
    let topic = topic("batches");
    publish(&pubsub, &topic).await;
    check_batches(&pubsub, &topic, "g").await;
    close(&pubsub, topic).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_batches_are_bounded_by_bytes() {
    let url = std::env::var("MILLSTREAM_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pubsub = SqlPubSub::connect(&url, config()).await.expect("connect");
    let topic = topic("batches");
    publish(&pubsub, &topic).await;
    check_batches(&pubsub, &topic, "g").await;
    close(&pubsub, topic).await;
}

/// MySQL reads the sizes from its `size` column; rows without one (written before the column
/// existed) are measured with `LENGTH(payload)` and batched the same.
#[cfg(feature = "mysql")]
#[tokio::test]
async fn mysql_batches_are_bounded_by_bytes() {
    let url = std::env::var("MILLSTREAM_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let pubsub = SqlPubSub::connect(&url, config()).await.expect("connect");
    let topic = topic("batches");
    publish(&pubsub, &topic).await;
    check_batches(&pubsub, &topic, "with-sizes").await;
    #[allow(irrefutable_let_patterns)] // (with only the `mysql` feature)
    let super::db::Pool::MySql(pool) = &pubsub.inner.pool
    else {
        unreachable!("a MySQL pool")
    };
    sqlx::query("UPDATE msunit_messages SET size = NULL WHERE topic = ?")
        .bind(&topic)
        .execute(pool)
        .await
        .expect("forget the sizes");
    check_batches(&pubsub, &topic, "without-sizes").await;
    close(&pubsub, topic).await;
}

/// A read touches the rows of its batch, not the backlog behind it: MariaDB does not bound an
/// index range by a subquery's value, and the first form of the read scanned every row after
/// the group's position on each read (consume-with-ack at 100 000 messages ran at 0.61 × raw
/// sqlx). Counted with the session's `Handler_read_next` around one read of a 3 000-row backlog.
#[cfg(feature = "mysql")]
#[tokio::test]
async fn mysql_reads_do_not_scan_the_backlog() {
    let url = std::env::var("MILLSTREAM_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let pubsub = SqlPubSub::connect(&url, config()).await.expect("connect");
    let topic = topic("backlog");
    let backlog: Vec<Message> = (0..3_000).map(|i| Message::new(format!("m{i}"))).collect();
    pubsub.publish_batch(&topic, backlog).await.expect("publish");
    #[allow(irrefutable_let_patterns)] // (with only the `mysql` feature)
    let super::db::Pool::MySql(pool) = &pubsub.inner.pool
    else {
        unreachable!("a MySQL pool")
    };
    let mut conn = pool.acquire().await.expect("a connection");
    async fn reads(conn: &mut sqlx::MySqlConnection) -> i64 {
        let (_, value): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Handler_read_next'")
            .fetch_one(conn)
            .await
            .expect("status");
        value.parse().expect("a count")
    }
    let before = reads(&mut conn).await;
    let q = &pubsub.inner.queries;
    let rows = sqlx::query(&q.read)
        .bind(&topic)
        .bind(10_i64)
        .bind(4_i64)
        .bind(1000_i64)
        .bind(&topic)
        .fetch_all(&mut *conn)
        .await
        .expect("read");
    let touched = reads(&mut conn).await - before;
    assert_eq!(rows.len(), 4, "one batch");
    assert!(touched < 100, "one read of a batch of 4 stepped through {touched} index entries");
    drop(conn);
    close(&pubsub, topic).await;
}
