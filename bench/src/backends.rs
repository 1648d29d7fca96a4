//! The durable backends side by side with their raw clients (`--features backends`, then
//! `--scenario backends` or any of
//! `sqlite`, `postgres`, `mysql`, `nats`): the same work through millstream and through sqlx or
//! async-nats alone, against the same server, in one run.
//!
//! Three figures per backend, in messages per second, `messages` messages (100 000 unless
//! `--messages` says otherwise) of the ~100-byte bench payload:
//! - **publish**: one message at a time, each one stored before the next is sent, for a tenth of
//!   the messages. millstream: `publish`. Raw SQL: one `INSERT` of the row with its sequence
//!   number (autocommit); raw NATS: `publish` and its ack awaited.
//! - **publish batch**: batches of [`BATCH`]. millstream: `publish_batch`. Raw SQL: one
//!   transaction with one multi-row `INSERT` per batch; raw NATS: the batch's publishes sent, then
//!   their acks awaited.
//! - **consume+ack**: everything published above, read in order by one consumer that acks each
//!   message before it takes the next. millstream: a group subscription, `next` + `ack().await`.
//!   Raw SQL: `SELECT` [`BATCH`] rows after the offset, then one `UPDATE` of the group's offset
//!   (guarded on its previous value) per message; raw NATS: a durable pull consumer fetching
//!   [`BATCH`] at a time, each message acked.
//!
//! The raw SQL side writes rows of the same shape as millstream's log (topic, sequence number,
//! message id, metadata, payload, creation time; the same primary key) and reads back the same
//! columns, but it knows each sequence number because it is the only publisher: the floor under
//! what a backend can do that must also keep order and density across publishers.
//!
//! Beside each figure, the CPU time per message of this process (the client) and of the server's
//! processes ([`crate::cpu`]): the capacity model of `docs/scaling.md` divides a core by them. The
//! server's time is all of its work, so measure on a server nothing else uses.
//!
//! A server that does not answer is skipped with a line saying so ("skipped: no server on
//! 127.0.0.1:5432"); SQLite needs nothing. Tables and streams made by a run are dropped after it.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use futures_util::StreamExt;
use millstream::pubsub::nats::{NatsConfig, NatsPubSub};
use millstream::{Message, Publisher, SqlConfig, SqlPubSub, SubscribeOptions, Subscriber};
use serde::Serialize;

use crate::cpu::{Measured, Phase};
use crate::side_by_side::{unique, Bench, BoxError, PAYLOAD};

/// Messages per publish batch and per consumer fetch, on both sides.
pub(crate) const BATCH: usize = 100;

/// The backends of this scenario, by the name `--scenario` takes.
pub(crate) const NAMES: &[&str] = &["sqlite", "postgres", "mysql", "nats"];

/// The figures' names, in the order of [`Rates`].
const SCENARIOS: [&str; 9] = [
    "publish",
    "publish batch",
    "consume+ack",
    "publish client-us",
    "publish batch client-us",
    "consume+ack client-us",
    "publish server-us",
    "publish batch server-us",
    "consume+ack server-us",
];

/// (publish, publish batch, consume+ack) in msg/s, then the same phases' CPU microseconds per
/// message in this process (the client), then in the server's processes ([`crate::cpu`]).
type Rates = [f64; 9];

/// The three phases' figures as [`Rates`].
fn rates(phases: [Measured; 3]) -> Rates {
    let mut rates = [0.0; 9];
    for (i, phase) in phases.iter().enumerate() {
        rates[i] = phase.rate;
        rates[i + 3] = phase.client_us;
        rates[i + 6] = phase.server_us;
    }
    rates
}

/// One figure of one backend: millstream beside its raw client.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Row {
    /// `"postgres publish"` and so on.
    pub(crate) scenario: String,
    pub(crate) backend: &'static str,
    /// The server's name and version, as it reports it.
    pub(crate) server: String,
    pub(crate) messages: usize,
    pub(crate) msgs_per_sec: f64,
    pub(crate) raw_msgs_per_sec: f64,
    pub(crate) ratio_to_raw: f64,
    /// CPU microseconds per message in this process (the client) and in the server's processes
    /// (medians of each, so the two may come from different runs).
    pub(crate) client_us_per_msg: f64,
    pub(crate) server_us_per_msg: f64,
    pub(crate) raw_client_us_per_msg: f64,
    pub(crate) raw_server_us_per_msg: f64,
    /// The raw client's name.
    pub(crate) raw: &'static str,
}

/// A backend's name for tables, its server's address, and its raw client.
fn describe(name: &str) -> (&'static str, Option<&'static str>, &'static str) {
    match name {
        "sqlite" => ("SQLite", None, "raw sqlx"),
        "postgres" => ("PostgreSQL", Some("127.0.0.1:5432"), "raw sqlx"),
        "mysql" => ("MySQL / MariaDB", Some("127.0.0.1:3306"), "raw sqlx"),
        _ => ("NATS JetStream", Some("127.0.0.1:4222"), "raw async-nats"),
    }
}

/// The command names of a backend's server processes, whose CPU time counts (none for SQLite,
/// which runs in this process).
fn server_processes(name: &str) -> &'static [&'static str] {
    match name {
        "postgres" => &["postgres"],
        "mysql" => &["mariadbd", "mysqld"],
        "nats" => &["nats-server"],
        _ => &[],
    }
}

/// Runs the named backends, each `runs` times per side; prints what it skips and each run to
/// stderr. Returns the rows of the backends that ran; an error is a run that failed.
pub(crate) fn run(names: &[&'static str], messages: usize, runs: usize) -> Result<Vec<Row>, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut rows = Vec::new();
    for &name in names {
        let (backend, address, raw) = describe(name);
        if address.is_some_and(|address| !answers(name, address)) {
            continue;
        }
        let figures = runtime.block_on(one(name, messages, runs)).map_err(|e| format!("{name}: {e}"))?;
        let Some((server, medians)) = figures else { continue };
        for (i, (scenario, (ours, theirs))) in SCENARIOS.iter().zip(medians).take(3).enumerate() {
            let count = if *scenario == "publish" { single_count(messages) } else { messages };
            let ((client, raw_client), (server_us, raw_server)) = (medians[i + 3], medians[i + 6]);
            rows.push(Row {
                scenario: format!("{name} {scenario}"),
                backend,
                server: server.clone(),
                messages: count,
                msgs_per_sec: ours,
                raw_msgs_per_sec: theirs,
                ratio_to_raw: ours / theirs,
                client_us_per_msg: client,
                server_us_per_msg: server_us,
                raw_client_us_per_msg: raw_client,
                raw_server_us_per_msg: raw_server,
                raw,
            });
        }
    }
    Ok(rows)
}

/// Whether a server answers on `address` (within a second); says "NAME: skipped: no server on
/// ADDRESS" when none does.
pub(crate) fn answers(name: &str, address: &str) -> bool {
    let addr: SocketAddr = address.parse().expect("a socket address");
    let up = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok();
    if !up {
        eprintln!("{name}: skipped: no server on {address}");
    }
    up
}

/// The messages of the one-at-a-time publish.
fn single_count(messages: usize) -> usize {
    (messages / 10).max(1)
}

/// One backend: its server's version and the medians, `None` when one side ran alone.
async fn one(
    name: &'static str,
    messages: usize,
    runs: usize,
) -> Result<Option<(String, [(f64, f64); 9])>, BoxError> {
    let bench = Bench { name, raw: "raw", setting: String::new(), scenarios: SCENARIOS };
    let scratch = std::env::temp_dir().join(unique("millstream-bench-sqlite"));
    let url = match name {
        "sqlite" => {
            std::fs::create_dir_all(&scratch)?;
            format!("sqlite:{}?mode=rwc", scratch.join("bench.db").display())
        }
        "postgres" => "postgres://postgres@127.0.0.1:5432/test".to_owned(),
        "mysql" => "mysql://root@127.0.0.1:3306/test".to_owned(),
        _ => "nats://127.0.0.1:4222".to_owned(),
    };
    let processes = server_processes(name);
    let result = match name {
        "nats" => {
            let server = nats_version(&url).await?;
            let medians = bench
                .medians(
                    runs,
                    async || nats_ours(&url, messages, processes).await,
                    async || nats_raw(&url, messages, processes).await,
                )
                .await?;
            medians.map(|m| (server, m))
        }
        _ => {
            let server = sql_version(&url).await?;
            let medians = bench
                .medians(
                    runs,
                    async || sql_ours(&url, messages, processes).await,
                    async || sql_raw(&url, messages, processes).await,
                )
                .await?;
            medians.map(|m| (server, m))
        }
    };
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(result)
}

/// The table, one per backend, as the README shows it.
pub(crate) fn markdown(rows: &[Row], runs: usize) -> String {
    let mut out = String::new();
    let mut backends: Vec<&str> = rows.iter().map(|r| r.backend).collect();
    backends.dedup();
    for backend in backends {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.backend == backend).collect();
        let first = mine[0];
        out.push_str(&format!(
            "{backend} ({}): {} messages of {} bytes (publish: {}), batches of {BATCH}, median of {runs} runs\n\n\
             | scenario | millstream msg/s | {} msg/s | millstream / raw | CPU µs/msg (client + server), millstream; raw |\n\
             |---|---:|---:|---:|---:|\n",
            first.server,
            messages_text(mine.iter().map(|r| r.messages).max().unwrap_or(0)),
            PAYLOAD.len(),
            messages_text(single_count(mine.iter().map(|r| r.messages).max().unwrap_or(0))),
            first.raw,
        ));
        for row in mine {
            let scenario = row.scenario.split_once(' ').map_or(row.scenario.as_str(), |(_, s)| s);
            out.push_str(&format!(
                "| {scenario} | {} | {} | {:.2} | {} + {}; {} + {} |\n",
                messages_text(row.msgs_per_sec.round() as usize),
                messages_text(row.raw_msgs_per_sec.round() as usize),
                row.ratio_to_raw,
                micros(row.client_us_per_msg),
                micros(row.server_us_per_msg),
                micros(row.raw_client_us_per_msg),
                micros(row.raw_server_us_per_msg),
            ));
        }
        out.push('\n');
    }
    out
}

/// Microseconds as the table shows them: whole ones, one decimal under 10.
fn micros(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

/// `123456` as `123 456`.
pub(crate) fn messages_text(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Publishes `messages` one at a time, then in batches, then consumes everything with acks.
async fn millstream_side(
    pubsub: &(impl Publisher + Subscriber),
    topic: &str,
    messages: usize,
    server: &'static [&'static str],
) -> Result<Rates, BoxError> {
    let single = single_count(messages);
    let phase = Phase::start(server);
    for _ in 0..single {
        pubsub.publish(topic, Message::new(PAYLOAD)).await.map_err(|e| e.into_std())?;
    }
    let publish = phase.end(single);
    let phase = Phase::start(server);
    let mut left = messages;
    while left > 0 {
        let n = left.min(BATCH);
        let batch = (0..n).map(|_| Message::new(PAYLOAD)).collect();
        pubsub.publish_batch(topic, batch).await.map_err(|e| e.into_std())?;
        left -= n;
    }
    let batch = phase.end(messages);
    let phase = Phase::start(server);
    let mut sub =
        pubsub.subscribe(topic, SubscribeOptions::group("bench")).await.map_err(|e| e.into_std())?;
    for _ in 0..single + messages {
        let delivery = sub.next().await.ok_or("subscription ended")?.map_err(|e| e.into_std())?;
        delivery.ack().await.map_err(|e| e.into_std())?;
    }
    Ok(rates([publish, batch, phase.end(single + messages)]))
}

async fn sql_version(url: &str) -> Result<String, BoxError> {
    use sqlx::any::AnyPoolOptions;
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new().max_connections(1).connect(url).await?;
    let query =
        if url.starts_with("sqlite") { "SELECT 'SQLite ' || sqlite_version()" } else { "SELECT version()" };
    let version: String = sqlx::query_scalar(query).fetch_one(&pool).await?;
    pool.close().await;
    // PostgreSQL's is a sentence ("PostgreSQL 15.19 (Debian ...) on x86_64..."): its first two words.
    Ok(match url {
        u if u.starts_with("postgres") => version.split_whitespace().take(2).collect::<Vec<_>>().join(" "),
        // MariaDB's: "10.11.19-MariaDB-0+deb12u1".
        u if u.starts_with("mysql") => {
            let server = if version.contains("MariaDB") { "MariaDB" } else { "MySQL" };
            format!("{server} {}", version.split('-').next().unwrap_or(&version))
        }
        _ => version,
    })
}

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// A table prefix no other run uses.
fn prefix() -> String {
    format!("msb{}_", unique("").rsplit('.').next().unwrap_or("0"))
}

async fn sql_ours(url: &str, messages: usize, server: &'static [&'static str]) -> Result<Rates, BoxError> {
    let prefix = prefix();
    let pubsub = SqlPubSub::connect(url, SqlConfig::default().table_prefix(&prefix).batch_size(BATCH))
        .await
        .map_err(|e| e.into_std())?;
    let rates = millstream_side(&pubsub, &unique("sql"), messages, server).await;
    Publisher::close(&pubsub).await.map_err(|e| e.into_std())?;
    Subscriber::close(&pubsub).await.map_err(|e| e.into_std())?;
    drop(pubsub);
    drop_tables(url, &["topics", "messages", "groups"].map(|t| format!("{prefix}{t}"))).await?;
    rates
}

async fn drop_tables(url: &str, tables: &[String]) -> Result<(), BoxError> {
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(url).await?;
    for table in tables {
        sqlx::query(&format!("DROP TABLE IF EXISTS {table}")).execute(&pool).await?;
    }
    pool.close().await;
    Ok(())
}

async fn sql_raw(url: &str, messages: usize, server: &'static [&'static str]) -> Result<Rates, BoxError> {
    let prefix = prefix();
    let rates = if url.starts_with("sqlite") {
        raw_sqlite(url, &prefix, messages, server).await
    } else if url.starts_with("postgres") {
        raw_postgres(url, &prefix, messages, server).await
    } else {
        raw_mysql(url, &prefix, messages, server).await
    };
    drop_tables(url, &[format!("{prefix}raw_log"), format!("{prefix}raw_offset")]).await?;
    rates
}

/// The raw SQL side: a log table and an offset row, written and read with plain sqlx.
macro_rules! raw_sql {
    ($name:ident, $db:ty, $log:literal, $offset:literal, $values:literal, $read:literal, $ack:literal) => {
        async fn $name(
            url: &str,
            prefix: &str,
            messages: usize,
            server: &'static [&'static str],
        ) -> Result<Rates, BoxError> {
            use sqlx::Row as _;
            let pool = sqlx::Pool::<$db>::connect(url).await?;
            let (log, offset) = (format!("{prefix}raw_log"), format!("{prefix}raw_offset"));
            sqlx::query(&format!($log, log)).execute(&pool).await?;
            sqlx::query(&format!($offset, offset)).execute(&pool).await?;
            sqlx::query(&format!("INSERT INTO {offset} (grp, acked) VALUES ('bench', 0)"))
                .execute(&pool)
                .await?;
            let single = single_count(messages);
            let topic = unique("raw");
            let phase = Phase::start(server);
            let insert = format!(
                "INSERT INTO {log} (topic, seq, id, metadata, payload, created_ms) VALUES {}",
                $values
            );
            for seq in 1..=single as i64 {
                sqlx::query(&insert)
                    .bind(&topic)
                    .bind(seq)
                    .bind(millstream::MessageId::new().to_string())
                    .bind("[]")
                    .bind(PAYLOAD)
                    .bind(now_ms())
                    .execute(&pool)
                    .await?;
            }
            let publish = phase.end(single);
            let phase = Phase::start(server);
            let mut seq = single as i64;
            let total = (single + messages) as i64;
            while seq < total {
                let n = (total - seq).min(BATCH as i64);
                let mut tx = pool.begin().await?;
                let mut insert = sqlx::QueryBuilder::<$db>::new(format!(
                    "INSERT INTO {log} (topic, seq, id, metadata, payload, created_ms) "
                ));
                let created = now_ms();
                insert.push_values(0..n, |mut row, i| {
                    row.push_bind(&topic)
                        .push_bind(seq + 1 + i)
                        .push_bind(millstream::MessageId::new().to_string())
                        .push_bind("[]")
                        .push_bind(PAYLOAD)
                        .push_bind(created);
                });
                insert.build().execute(&mut *tx).await?;
                tx.commit().await?;
                seq += n;
            }
            let batch = phase.end(messages);
            let phase = Phase::start(server);
            let (read, ack) = (format!($read, log), format!($ack, offset));
            let mut acked = 0i64;
            while acked < total {
                let rows =
                    sqlx::query(&read).bind(&topic).bind(acked).bind(BATCH as i64).fetch_all(&pool).await?;
                for row in rows {
                    let seq: i64 = row.try_get(0)?;
                    let id: String = row.try_get(1)?;
                    let metadata: String = row.try_get(2)?;
                    let payload: Vec<u8> = row.try_get(3)?;
                    std::hint::black_box((id, metadata, payload));
                    sqlx::query(&ack).bind(seq).bind(acked).execute(&pool).await?;
                    acked = seq;
                }
            }
            let consume = phase.end(total as usize);
            pool.close().await;
            Ok(rates([publish, batch, consume]))
        }
    };
}

raw_sql!(
    raw_sqlite,
    sqlx::Sqlite,
    "CREATE TABLE {} (topic TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, metadata TEXT NOT NULL, \
     payload BLOB NOT NULL, created_ms INTEGER NOT NULL, PRIMARY KEY (topic, seq))",
    "CREATE TABLE {} (grp TEXT PRIMARY KEY, acked INTEGER NOT NULL)",
    "(?, ?, ?, ?, ?, ?)",
    "SELECT seq, id, metadata, payload FROM {} WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?",
    "UPDATE {} SET acked = ? WHERE grp = 'bench' AND acked = ?"
);
raw_sql!(
    raw_postgres,
    sqlx::Postgres,
    "CREATE TABLE {} (topic TEXT NOT NULL, seq BIGINT NOT NULL, id TEXT NOT NULL, metadata TEXT NOT NULL, \
     payload BYTEA NOT NULL, created_ms BIGINT NOT NULL, PRIMARY KEY (topic, seq))",
    "CREATE TABLE {} (grp TEXT PRIMARY KEY, acked BIGINT NOT NULL)",
    "($1, $2, $3, $4, $5, $6)",
    "SELECT seq, id, metadata, payload FROM {} WHERE topic = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    "UPDATE {} SET acked = $1 WHERE grp = 'bench' AND acked = $2"
);
raw_sql!(
    raw_mysql,
    sqlx::MySql,
    "CREATE TABLE {} (topic VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
     seq BIGINT NOT NULL, id VARCHAR(64) NOT NULL, metadata LONGTEXT NOT NULL, payload LONGBLOB NOT NULL, \
     created_ms BIGINT NOT NULL, PRIMARY KEY (topic, seq)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE {} (grp VARCHAR(64) PRIMARY KEY, acked BIGINT NOT NULL) ENGINE=InnoDB",
    "(?, ?, ?, ?, ?, ?)",
    "SELECT seq, id, metadata, payload FROM {} WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?",
    "UPDATE {} SET acked = ? WHERE grp = 'bench' AND acked = ?"
);

async fn nats_version(url: &str) -> Result<String, BoxError> {
    let client = async_nats::connect(url).await?;
    let version = format!("nats-server {}", client.server_info().version);
    drop(client);
    Ok(version)
}

async fn nats_ours(url: &str, messages: usize, server: &'static [&'static str]) -> Result<Rates, BoxError> {
    let pubsub = NatsPubSub::connect(url, NatsConfig::default().stream_prefix("MSBENCH_").batch(BATCH))
        .await
        .map_err(|e| e.into_std())?;
    let topic = unique("nats");
    let rates = millstream_side(&pubsub, &topic, messages, server).await;
    pubsub.delete_topics(&[topic]).await.map_err(|e| e.into_std())?;
    Publisher::close(&pubsub).await.map_err(|e| e.into_std())?;
    rates
}

/// A `Nats-Msg-Id` header with a new id: what millstream sends with every message (the server
/// drops a re-published id as a duplicate), so both sides move the same bytes and the server does
/// the same duplicate tracking.
fn id_header() -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, millstream::MessageId::new().to_string());
    headers
}

/// Raw async-nats: a stream of the same shape, a durable pull consumer acked message by message.
/// Each message carries a `Nats-Msg-Id`, as millstream's do (see [`id_header`]).
async fn nats_raw(url: &str, messages: usize, server: &'static [&'static str]) -> Result<Rates, BoxError> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    let subject = unique("natsraw");
    let name = subject.replace('.', "_");
    let stream = js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await?;
    let result = async {
        let single = single_count(messages);
        let phase = Phase::start(server);
        for _ in 0..single {
            js.publish_with_headers(subject.clone(), id_header(), millstream::Bytes::from_static(PAYLOAD))
                .await?
                .await?;
        }
        let publish = phase.end(single);
        let phase = Phase::start(server);
        let mut left = messages;
        while left > 0 {
            let n = left.min(BATCH);
            let mut acks = Vec::with_capacity(n);
            for _ in 0..n {
                acks.push(
                    js.publish_with_headers(
                        subject.clone(),
                        id_header(),
                        millstream::Bytes::from_static(PAYLOAD),
                    )
                    .await?,
                );
            }
            for ack in acks {
                ack.await?;
            }
            left -= n;
        }
        let batch = phase.end(messages);
        let phase = Phase::start(server);
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
        let mut pulled = consumer.stream().max_messages_per_batch(BATCH).messages().await?;
        for _ in 0..single + messages {
            let message = pulled.next().await.ok_or("stream ended")??;
            std::hint::black_box(&message.payload);
            message.ack().await?;
        }
        Ok::<_, BoxError>(rates([publish, batch, phase.end(single + messages)]))
    }
    .await;
    js.delete_stream(name).await?;
    result
}
