//! Backend throughput (issue 5, Speed): for each durable backend, publish msgs/s and
//! consume-with-ack msgs/s of `messages` small messages through millstream, and the same work
//! done with the raw client crate (sqlx, async-nats) without millstream, side by side.
//!
//! Both sides do the same work: publish in batches of [`BATCH`] (one transaction / one pipelined
//! burst of JetStream publishes per batch), then consume in order acknowledging every message
//! (SQL: moving the group's offset; JetStream: `+ACK`). Needs the servers of the backend tests:
//! PostgreSQL and MariaDB on localhost (database `test`) and nats-server with JetStream.
//!
//! Wiring (in `main.rs`): `mod backends;`, a `backends` scenario name that calls
//! [`run`] and prints [`markdown`]; in `bench/Cargo.toml`, `millstream` with the features
//! `sqlite`, `postgres`, `mysql`, `nats`, plus `sqlx` (features `sqlite`, `postgres`, `mysql`)
//! `async-nats` and `futures-util` from the workspace.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use millstream::pubsub::nats::{NatsConfig, NatsPubSub};
use millstream::{Message, Publisher, SqlConfig, SqlPubSub, SubscribeOptions, Subscriber};

/// Messages per publish batch, on both sides.
pub(crate) const BATCH: usize = 100;
const PAYLOAD: &[u8] =
    br#"{"id":123456,"sku":"ABC-123","qty":3,"note":"benchmark message, about 100 bytes"}"#;

/// One backend's figures, in messages per second.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) backend: &'static str,
    pub(crate) publish: f64,
    pub(crate) consume: f64,
    pub(crate) raw_publish: f64,
    pub(crate) raw_consume: f64,
}

fn rate(messages: usize, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("bench.{name}.{}.{}", std::process::id(), nanos % 1_000_000_000)
}

/// Runs every backend whose server answers; a backend that cannot be reached is reported and left
/// out of the table.
pub(crate) fn run(messages: usize) -> Vec<Row> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let mut rows = Vec::new();
        let dir = std::env::temp_dir().join(unique("millstream-bench-sqlite"));
        std::fs::create_dir_all(&dir).unwrap();
        let sqlite_url = format!("sqlite:{}", dir.join("bench.db").display());
        let sql = [
            ("SQLite", sqlite_url),
            ("PostgreSQL", "postgres://postgres@127.0.0.1:5432/test".to_owned()),
            ("MySQL (MariaDB)", "mysql://root@127.0.0.1:3306/test".to_owned()),
        ];
        for (name, url) in sql {
            match sql_row(name, &url, messages).await {
                Ok(row) => rows.push(row),
                Err(error) => eprintln!("backends bench: {name} skipped: {error}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        match nats_row(messages).await {
            Ok(row) => rows.push(row),
            Err(error) => eprintln!("backends bench: NATS skipped: {error}"),
        }
        rows
    })
}

/// The table, as the README shows it.
pub(crate) fn markdown(rows: &[Row], messages: usize) -> String {
    let mut out = format!(
        "{messages} messages of {} bytes, batches of {BATCH}\n\n\
         | backend | publish msg/s | raw client | consume+ack msg/s | raw client |\n\
         |---|---:|---:|---:|---:|\n",
        PAYLOAD.len()
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} ({:+.0}%) | {:.0} | {:.0} ({:+.0}%) |\n",
            r.backend,
            r.publish,
            r.raw_publish,
            (r.publish / r.raw_publish - 1.0) * 100.0,
            r.consume,
            r.raw_consume,
            (r.consume / r.raw_consume - 1.0) * 100.0,
        ));
    }
    out
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn millstream_side(
    pubsub: &(impl Publisher + Subscriber),
    topic: &str,
    messages: usize,
) -> Result<(f64, f64), BoxError> {
    let started = Instant::now();
    let mut left = messages;
    while left > 0 {
        let n = left.min(BATCH);
        let batch = (0..n).map(|_| Message::new(PAYLOAD)).collect();
        pubsub.publish_batch(topic, batch).await.map_err(|e| e.into_std())?;
        left -= n;
    }
    let publish = rate(messages, started.elapsed());
    let started = Instant::now();
    let mut sub =
        pubsub.subscribe(topic, SubscribeOptions::group("bench")).await.map_err(|e| e.into_std())?;
    for _ in 0..messages {
        let delivery = sub.next().await.ok_or("subscription ended")?.map_err(|e| e.into_std())?;
        delivery.ack().await.map_err(|e| e.into_std())?;
    }
    Ok((publish, rate(messages, started.elapsed())))
}

async fn sql_row(name: &'static str, url: &str, messages: usize) -> Result<Row, BoxError> {
    let prefix = format!("msbench{}_", std::process::id());
    let pubsub = SqlPubSub::connect(url, SqlConfig::default().table_prefix(&prefix).batch_size(BATCH))
        .await
        .map_err(|e| e.into_std())?;
    let topic = unique("sql");
    let (publish, consume) = millstream_side(&pubsub, &topic, messages).await?;
    pubsub.delete_topics(&[topic]).await.map_err(|e| e.into_std())?;
    let (raw_publish, raw_consume) = match name {
        "SQLite" => raw_sqlite(url, &prefix, messages).await?,
        "PostgreSQL" => raw_postgres(url, &prefix, messages).await?,
        _ => raw_mysql(url, &prefix, messages).await?,
    };
    Publisher::close(&pubsub).await.map_err(|e| e.into_std())?;
    Subscriber::close(&pubsub).await.map_err(|e| e.into_std())?;
    Ok(Row { backend: name, publish, consume, raw_publish, raw_consume })
}

/// The raw SQL baseline: a log table and an offset row, written and read with plain sqlx.
macro_rules! raw_sql {
    ($name:ident, $db:ty, $log:literal, $offset:literal, $read:literal, $ack:literal) => {
        async fn $name(url: &str, prefix: &str, messages: usize) -> Result<(f64, f64), BoxError> {
            use sqlx::Row as _;
            let pool = sqlx::Pool::<$db>::connect(url).await?;
            let (log, offset) = (format!("{prefix}raw_log"), format!("{prefix}raw_offset"));
            sqlx::query(&format!($log, log)).execute(&pool).await?;
            sqlx::query(&format!($offset, offset)).execute(&pool).await?;
            sqlx::query(&format!("INSERT INTO {offset} (grp, acked) VALUES ('bench', 0)"))
                .execute(&pool)
                .await?;
            let started = Instant::now();
            let mut seq = 0i64;
            while (seq as usize) < messages {
                let n = (messages - seq as usize).min(BATCH);
                let mut tx = pool.begin().await?;
                let mut insert = sqlx::QueryBuilder::<$db>::new(format!("INSERT INTO {log} (seq, payload) "));
                insert.push_values(0..n, |mut row, i| {
                    row.push_bind(seq + 1 + i as i64).push_bind(PAYLOAD);
                });
                insert.build().execute(&mut *tx).await?;
                tx.commit().await?;
                seq += n as i64;
            }
            let publish = rate(messages, started.elapsed());
            let started = Instant::now();
            let mut acked = 0i64;
            while (acked as usize) < messages {
                let rows =
                    sqlx::query(&format!($read, log)).bind(acked).bind(BATCH as i64).fetch_all(&pool).await?;
                for row in rows {
                    let seq: i64 = row.try_get(0)?;
                    let _payload: Vec<u8> = row.try_get(1)?;
                    sqlx::query(&format!($ack, offset)).bind(seq).bind(acked).execute(&pool).await?;
                    acked = seq;
                }
            }
            let consume = rate(messages, started.elapsed());
            sqlx::query(&format!("DROP TABLE {log}")).execute(&pool).await?;
            sqlx::query(&format!("DROP TABLE {offset}")).execute(&pool).await?;
            pool.close().await;
            Ok((publish, consume))
        }
    };
}

raw_sql!(
    raw_sqlite,
    sqlx::Sqlite,
    "CREATE TABLE {} (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)",
    "CREATE TABLE {} (grp TEXT PRIMARY KEY, acked INTEGER NOT NULL)",
    "SELECT seq, payload FROM {} WHERE seq > ? ORDER BY seq LIMIT ?",
    "UPDATE {} SET acked = ? WHERE grp = 'bench' AND acked = ?"
);
raw_sql!(
    raw_postgres,
    sqlx::Postgres,
    "CREATE TABLE {} (seq BIGINT PRIMARY KEY, payload BYTEA NOT NULL)",
    "CREATE TABLE {} (grp TEXT PRIMARY KEY, acked BIGINT NOT NULL)",
    "SELECT seq, payload FROM {} WHERE seq > $1 ORDER BY seq LIMIT $2",
    "UPDATE {} SET acked = $1 WHERE grp = 'bench' AND acked = $2"
);
raw_sql!(
    raw_mysql,
    sqlx::MySql,
    "CREATE TABLE {} (seq BIGINT PRIMARY KEY, payload LONGBLOB NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE {} (grp VARCHAR(64) PRIMARY KEY, acked BIGINT NOT NULL) ENGINE=InnoDB",
    "SELECT seq, payload FROM {} WHERE seq > ? ORDER BY seq LIMIT ?",
    "UPDATE {} SET acked = ? WHERE grp = 'bench' AND acked = ?"
);

async fn nats_row(messages: usize) -> Result<Row, BoxError> {
    let url = "nats://127.0.0.1:4222";
    let pubsub = NatsPubSub::connect(url, NatsConfig::default().stream_prefix("MSBENCH_").batch(BATCH))
        .await
        .map_err(|e| e.into_std())?;
    let topic = unique("nats");
    let (publish, consume) = millstream_side(&pubsub, &topic, messages).await?;
    pubsub.delete_topics(&[topic]).await.map_err(|e| e.into_std())?;

    // Raw async-nats: the same stream shape, publishes pipelined per batch, a durable pull
    // consumer acked message by message.
    use futures_util::StreamExt;
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    let subject = unique("natsraw");
    let stream = js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: subject.replace('.', "_"),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut left = messages;
    while left > 0 {
        let n = left.min(BATCH);
        let mut acks = Vec::with_capacity(n);
        for _ in 0..n {
            acks.push(js.publish(subject.clone(), millstream::Bytes::from_static(PAYLOAD)).await?);
        }
        for ack in acks {
            ack.await?;
        }
        left -= n;
    }
    let raw_publish = rate(messages, started.elapsed());
    let started = Instant::now();
    let consumer = stream
        .get_or_create_consumer(
            "bench",
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    let mut stream_messages = consumer.stream().max_messages_per_batch(BATCH).messages().await?;
    for _ in 0..messages {
        let message = stream_messages.next().await.ok_or("stream ended")??;
        message.ack().await?;
    }
    let raw_consume = rate(messages, started.elapsed());
    js.delete_stream(subject.replace('.', "_")).await?;
    Ok(Row { backend: "NATS JetStream", publish, consume, raw_publish, raw_consume })
}
