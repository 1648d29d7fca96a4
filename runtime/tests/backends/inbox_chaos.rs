//! The chaos test of the transactional inbox: 10 000 messages on NATS JetStream consumed by a
//! handler that takes a `Tx<Postgres>` (a row per message, a counter, an output through the
//! PostgreSQL outbox), in a child process SIGKILLed three times at random points under load,
//! with the NATS server restarted once in between. At the end every message's effect is applied
//! exactly once: 10 000 rows, one per message, a counter at 10 000, 10 000 outputs, and nothing
//! left for JetStream to redeliver.
//!
//! The NATS server is this test's own (a free port, a fresh store), so its restart disturbs no
//! other test. The random points come from a seed printed at the start (`MILLSTREAM_CHAOS_SEED`
//! replays one).
#![cfg(all(feature = "postgres", feature = "nats", unix))]

use std::ffi::OsStr;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use millstream::pubsub::sql::{sqlx::Postgres, SqlInbox};
use millstream::{
    App, Json, Message, NatsConfig, NatsPubSub, Publisher, Route, SqlConfig, SqlPubSub, State, Tx,
};

use crate::common::unique;
use crate::support::child::{self, KillOnDrop};

const TOTAL: i64 = 10_000;
const TIMEOUT: Duration = Duration::from_secs(300);
const SERVER: &str = "/usr/sbin/nats-server";

const NATS_ENV: &str = "MILLSTREAM_CHAOS_NATS";
const PREFIX_ENV: &str = "MILLSTREAM_CHAOS_PREFIX";
const TOPIC_ENV: &str = "MILLSTREAM_CHAOS_TOPIC";

fn pg_url() -> String {
    crate::support::sql::url("postgres")
}

fn sql_config(prefix: &str) -> SqlConfig {
    SqlConfig::default().table_prefix(prefix).max_connections(10).poll_interval(Duration::from_millis(50))
}

fn nats_config(prefix: &str) -> NatsConfig {
    // A short ack wait: what a killed consumer held comes back within seconds.
    NatsConfig::default()
        .stream_prefix(format!("{}_", prefix.to_uppercase()))
        .ack_wait(Duration::from_secs(4))
}

/// The tables the handler writes to.
#[derive(Clone)]
struct Effects {
    insert: std::sync::Arc<str>,
    count: std::sync::Arc<str>,
}

async fn apply(
    n: u64,
    mut tx: Tx<Postgres>,
    State(effects): State<Effects>,
) -> millstream::Result<Json<u64>> {
    let n = n as i64;
    sqlx::query(&effects.insert).bind(n).execute(&mut *tx).await.map_err(millstream::Error::backend)?;
    sqlx::query(&effects.count).execute(&mut *tx).await.map_err(millstream::Error::backend)?;
    Ok(Json(n as u64))
}

/// The consumer, run only as a child of `killed_consumers_and_a_restarted_broker_apply_each_message_once`.
#[test]
#[ignore = "helper: the child process of the inbox chaos test"]
fn chaos_consumer() {
    let (Ok(nats), Ok(prefix), Ok(topic)) =
        (std::env::var(NATS_ENV), std::env::var(PREFIX_ENV), std::env::var(TOPIC_ENV))
    else {
        panic!("run by the inbox chaos test only");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        // The broker may be restarting as this process starts: connect until it answers.
        let input = loop {
            match NatsPubSub::connect(&nats, nats_config(&prefix)).await {
                Ok(input) => break input,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let db = SqlPubSub::connect(&pg_url(), sql_config(&prefix)).await.expect("postgres");
        let effects = Effects {
            insert: format!("INSERT INTO {prefix}effects (n) VALUES ($1)").into(),
            count: format!("UPDATE {prefix}counter SET total = total + 1 WHERE id = 1").into(),
        };
        let app = App::new().pubsub(input).state(SqlInbox::new(&db)).state(effects).route(
            Route::new("apply", topic.as_str(), apply)
                .group("chaos")
                .publish(format!("{topic}.done"))
                .concurrency(8),
        );
        app.run().await.expect("the consumer runs");
    });
}

/// This test's own NATS server: a free port, a store in a folder of its own.
struct Broker {
    port: u16,
    store: PathBuf,
    process: Option<Child>,
}

impl Broker {
    fn start(store: &Path) -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut broker = Broker { port, store: store.to_owned(), process: None };
        broker.spawn();
        broker
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let process = Command::new(SERVER)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_millis(200))
            .is_err()
        {
            assert!(Instant::now() < deadline, "nats-server listens on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGTERM: it shuts down cleanly) and starts it again on the same store.
    fn restart(&mut self) {
        let mut process = self.process.take().expect("running");
        let _ = Command::new("kill").arg(process.id().to_string()).status();
        process.wait().expect("nats-server stops");
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A small deterministic generator (xorshift), seeded from the clock or `MILLSTREAM_CHAOS_SEED`.
struct Rng(u64);

impl Rng {
    fn between(&mut self, low: i64, high: i64) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + (self.0 % (high - low) as u64) as i64
    }
}

#[derive(Debug)]
enum Fault {
    KillConsumer,
    RestartBroker,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_consumers_and_a_restarted_broker_apply_each_message_once() {
    let seed =
        std::env::var("MILLSTREAM_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
    eprintln!("inbox chaos: seed {seed} (MILLSTREAM_CHAOS_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    // Faults at random numbers of applied messages, in rising order: kills around a restart.
    let mut faults = vec![
        (rng.between(500, 2_000), Fault::KillConsumer),
        (rng.between(2_500, 4_000), Fault::KillConsumer),
        (rng.between(4_500, 6_000), Fault::RestartBroker),
        (rng.between(6_500, 8_500), Fault::KillConsumer),
    ];
    faults.reverse();

    let store = std::env::temp_dir().join(unique("millstream-chaos-nats-"));
    let mut broker = Broker::start(&store);
    let prefix = unique("mschaos_");
    let topic = unique("chaos.in.");
    let db = SqlPubSub::connect(&pg_url(), sql_config(&prefix)).await.unwrap();
    let pool = db.postgres_pool().unwrap().clone();
    for statement in [
        format!("CREATE TABLE {prefix}effects (n BIGINT NOT NULL)"),
        format!("CREATE TABLE {prefix}counter (id INT PRIMARY KEY, total BIGINT NOT NULL)"),
        format!("INSERT INTO {prefix}counter VALUES (1, 0)"),
    ] {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }

    // Every message is in the stream before the first consumer starts.
    let nats = NatsPubSub::connect(&broker.url(), nats_config(&prefix)).await.unwrap();
    for chunk in (1..=TOTAL).collect::<Vec<_>>().chunks(500) {
        let messages = chunk.iter().map(|n| Message::new(n.to_string())).collect();
        nats.publish_batch(&topic, messages).await.unwrap();
    }

    let spawn = |url: &str| {
        KillOnDrop(child::spawn(
            module_path!(),
            "chaos_consumer",
            &[
                (NATS_ENV, OsStr::new(url)),
                (PREFIX_ENV, OsStr::new(&prefix)),
                (TOPIC_ENV, OsStr::new(&topic)),
            ],
        ))
    };
    let counter = format!("SELECT total FROM {prefix}counter WHERE id = 1");
    let applied = || async { sqlx::query_scalar::<_, i64>(&counter).fetch_one(&pool).await.unwrap() };

    let mut consumer = spawn(&broker.url());
    let deadline = Instant::now() + TIMEOUT;
    let mut done_faults = Vec::new();
    loop {
        let now = applied().await;
        assert!(
            now <= TOTAL,
            "applied {now} of {TOTAL}: a message was applied twice (faults so far: {done_faults:?})"
        );
        if now == TOTAL {
            break;
        }
        if faults.last().is_some_and(|(at, _)| now >= *at) {
            let (at, fault) = faults.pop().unwrap();
            eprintln!("inbox chaos: {fault:?} at {now} applied (planned at {at})");
            match fault {
                Fault::KillConsumer => {
                    drop(consumer); // SIGKILL, mid-stream
                    consumer = spawn(&broker.url());
                }
                Fault::RestartBroker => broker.restart(),
            }
            done_faults.push((now, fault));
        }
        if let Some(status) = consumer.0.try_wait().unwrap() {
            panic!("the consumer exited by itself: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "applied only {now} of {TOTAL} in {TIMEOUT:?} (faults: {done_faults:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(faults.is_empty(), "every fault happened before the end: {done_faults:?}, left {faults:?}");

    // Quiet: JetStream has nothing left to deliver or redeliver (what the killed consumers held
    // came back and was acked unhandled, or applied once).
    let mut stream = nats.ensure_stream(&topic).await.unwrap();
    let name = {
        use futures_util::StreamExt;
        let mut names = stream.consumer_names();
        names.next().await.expect("the group's consumer").unwrap()
    };
    loop {
        let info = stream.consumer_info(&name).await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "JetStream still holds {} pending, {} unacked",
            info.num_pending,
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stream.info().await;

    assert_eq!(applied().await, TOTAL, "the counter: each message once");
    let (rows, distinct): (i64, i64) =
        sqlx::query_as(&format!("SELECT COUNT(*), COUNT(DISTINCT n) FROM {prefix}effects"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (TOTAL, TOTAL), "a row per message, once each");
    let (outputs, distinct_outputs): (i64, i64) = sqlx::query_as(&format!(
        "SELECT COUNT(*), COUNT(DISTINCT payload) FROM {prefix}messages WHERE topic = $1"
    ))
    .bind(format!("{topic}.done"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((outputs, distinct_outputs), (TOTAL, TOTAL), "an output per message in the outbox, once each");
    eprintln!("inbox chaos: faults {done_faults:?}; {TOTAL} applied once each");

    drop(consumer);
    let _ = nats.delete_topics(std::slice::from_ref(&topic)).await;
    for table in ["effects", "counter", "inbox", "messages", "groups", "topics"] {
        let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {prefix}{table}")).execute(&pool).await;
    }
}
