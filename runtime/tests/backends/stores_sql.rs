//! `SqlDedupStore` and `SqlAttemptStore` against SQLite (a fresh temp dir per test), PostgreSQL (127.0.0.1:5432,
//! database `test`; override with `MILLSTREAM_POSTGRES_URL`) and MariaDB / MySQL (127.0.0.1:3306,
//! database `test`; `MILLSTREAM_MYSQL_URL`): the `DedupStore` contract, keys shared between stores
//! (processes), expiry without extension, purging, and a `Deduplicator` in a router; the
//! `AttemptStore` contract and counts shared between stores.
//!
//! Tables: tests whose rows are keyed per run share a fixed table per test; tests that need a
//! table of their own use a fresh prefix and drop the table at the end.
#![cfg(all(feature = "conformance", any(feature = "sqlite", feature = "postgres", feature = "mysql")))]

use crate::support::sql as support;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{within, Event, Recording, TIMEOUT};
use millstream::conformance::{check_attempt_store, check_dedup_store};
use millstream::middleware::{AttemptStore, DedupStore, Deduplicator};
use millstream::App;
use millstream::{Error, Message, Publisher, Route, SqlAttemptStore, SqlConfig, SqlDedupStore, SqlPubSub};
use parking_lot::Mutex;

/// Unique per process and call: keys and tables of this run never meet another run's.
fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!(
        "{prefix}{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One database to test against: its URL (and, for SQLite, the directory holding it).
struct Db {
    url: String,
    _dir: Option<TempDir>,
}

fn db(name: &str) -> Db {
    if name == "sqlite" {
        let dir = std::env::temp_dir().join(unique("millstream-dedup-sqlite-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let url = format!("sqlite:{}", dir.join("dedup.db").display());
        Db { url, _dir: Some(TempDir(dir)) }
    } else {
        Db { url: support::url(name), _dir: None }
    }
}

fn config(prefix: &str) -> SqlConfig {
    SqlConfig::default().table_prefix(prefix).max_connections(4)
}

/// A plain pool of the database, to look at the table from outside the store.
enum Raw {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
}

impl Raw {
    async fn connect(url: &str) -> Raw {
        match url.split(':').next().unwrap() {
            #[cfg(feature = "sqlite")]
            "sqlite" => Raw::Sqlite(sqlx::SqlitePool::connect(url).await.unwrap()),
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Raw::Postgres(sqlx::PgPool::connect(url).await.unwrap()),
            #[cfg(feature = "mysql")]
            "mysql" => Raw::MySql(sqlx::MySqlPool::connect(url).await.unwrap()),
            other => panic!("no pool for {other}"),
        }
    }

    async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        match self {
            #[cfg(feature = "sqlite")]
            Raw::Sqlite(pool) => sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap(),
            #[cfg(feature = "postgres")]
            Raw::Postgres(pool) => sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap(),
            #[cfg(feature = "mysql")]
            Raw::MySql(pool) => sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap(),
        }
    }

    async fn drop_table(&self, table: &str) {
        let sql = format!("DROP TABLE IF EXISTS {table}");
        match self {
            #[cfg(feature = "sqlite")]
            Raw::Sqlite(pool) => drop(sqlx::query(&sql).execute(pool).await.unwrap()),
            #[cfg(feature = "postgres")]
            Raw::Postgres(pool) => drop(sqlx::query(&sql).execute(pool).await.unwrap()),
            #[cfg(feature = "mysql")]
            Raw::MySql(pool) => drop(sqlx::query(&sql).execute(pool).await.unwrap()),
        }
    }
}

/// The `DedupStore` contract, through a store connected by URL.
async fn keeps_the_contract(name: &str) {
    let db = db(name);
    let store = SqlDedupStore::connect(&db.url, config("msdd_contract_")).await.unwrap();
    check_dedup_store(Arc::new(store), &unique(&format!("{name}-contract-"))).await.unwrap();
}

/// Two stores with pools of their own (as two processes would have) on one table, created
/// concurrently by both: they see each other's keys, of any length; a duplicate does not extend a
/// key's window, even when it comes from the other store.
async fn shares_keys_between_stores(name: &str) {
    let db = db(name);
    let prefix = unique("msdd_");
    let a = SqlDedupStore::connect(&db.url, config(&prefix)).await.unwrap();
    let b = SqlDedupStore::new(&SqlPubSub::connect(&db.url, config(&prefix)).await.unwrap());
    assert_eq!(a.table(), format!("{prefix}dedup"));
    let (made_a, made_b) = tokio::join!(a.ensure_schema(), b.ensure_schema());
    made_a.unwrap();
    made_b.unwrap();

    let hour = Duration::from_secs(3600);
    let long = format!("{} «ключ» '\"; DROP TABLE x; --", "ü".repeat(1500));
    for key in ["order-1", long.as_str(), ""] {
        assert!(a.insert_if_new(key, hour).await.unwrap(), "{key:.20} is new");
        assert!(!b.insert_if_new(key, hour).await.unwrap(), "{key:.20} is known to the other store");
        assert!(!a.insert_if_new(key, hour).await.unwrap());
    }
    assert!(b.insert_if_new(&long[..long.len() - 1], hour).await.unwrap(), "a prefix is another key");
    b.remove(&long).await.unwrap();
    assert!(a.insert_if_new(&long, hour).await.unwrap(), "removed through the other store");

    // Duplicates arrive more often than the window: if they extended it, the key would never be new.
    let short = "short-window";
    let window = Duration::from_millis(500);
    assert!(a.insert_if_new(short, window).await.unwrap());
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut turn = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let store = if turn % 2 == 0 { &b } else { &a };
        turn += 1;
        if store.insert_if_new(short, window).await.unwrap() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "duplicates kept `{short}` alive");
    }

    Raw::connect(&db.url).await.drop_table(a.table()).await;
}

/// Of many concurrent inserts of a key whose row expired (a zero window: expired at once), exactly
/// one is new, round after round; and the key's new window holds.
async fn races_an_expired_key_once(name: &str) {
    let db = db(name);
    let config = config("msdd_race_").max_connections(12);
    let store = Arc::new(SqlDedupStore::connect(&db.url, config).await.unwrap());
    let run = unique(&format!("{name}-race-"));
    for round in 0..10 {
        let key = format!("{run}:{round}");
        assert!(store.insert_if_new(&key, Duration::ZERO).await.unwrap());
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move { store.insert_if_new(&key, Duration::from_secs(3600)).await })
            })
            .collect();
        let mut new = 0;
        for task in tasks {
            new += u32::from(task.await.unwrap().unwrap());
        }
        assert_eq!(new, 1, "round {round}: {new} of 12 inserts of an expired key were new");
        assert!(!store.insert_if_new(&key, Duration::from_secs(3600)).await.unwrap());
    }
}

/// `purge_expired` deletes the expired rows and only those; with a zero interval, every insert
/// purges on its own.
async fn purges_expired_rows_only(name: &str) {
    let db = db(name);
    let prefix = unique("msdd_");
    let store = SqlDedupStore::connect(&db.url, config(&prefix)).await.unwrap().purge_interval(None);
    let raw = Raw::connect(&db.url).await;
    let (hour, instant) = (Duration::from_secs(3600), Duration::from_millis(1));

    assert!(store.insert_if_new("live", hour).await.unwrap());
    assert!(store.insert_if_new("gone", instant).await.unwrap());
    // Expired rows are still there until purged (no timing assumption: the row exists either way).
    assert_eq!(raw.count(store.table()).await, 2);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut purged = 0;
    while purged == 0 {
        assert!(tokio::time::Instant::now() < deadline, "`gone` was never purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
        purged = store.purge_expired().await.unwrap();
    }
    assert_eq!(purged, 1, "only the expired row");
    assert_eq!(raw.count(store.table()).await, 1);
    assert!(!store.insert_if_new("live", hour).await.unwrap(), "the live key was kept");
    assert_eq!(store.purge_expired().await.unwrap(), 0);

    // Opportunistic: each insert purges (interval zero) until `gone` is gone.
    let store = store.purge_interval(Some(Duration::ZERO));
    assert!(store.insert_if_new("gone", instant).await.unwrap());
    let mut live = 1;
    loop {
        assert!(tokio::time::Instant::now() < deadline + TIMEOUT, "no insert purged `gone`");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(store.insert_if_new(&format!("live-{live}"), hour).await.unwrap());
        live += 1;
        if raw.count(store.table()).await == live {
            break;
        }
    }

    raw.drop_table(store.table()).await;
}

/// A handler failing its first call, recording the payloads it handled.
fn failing_once(
    calls: Arc<AtomicU32>,
    handled: Arc<Mutex<Vec<String>>>,
) -> impl Fn(serde_json::Value) -> std::future::Ready<Result<(), Error>> + Clone {
    move |payload| {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return std::future::ready(Err(Error::msg("first call fails")));
        }
        handled.lock().push(payload.to_string());
        std::future::ready(Ok(()))
    }
}

/// A message published twice (one id) is handled once by a router deduplicating through the
/// SQL store, and a failed attempt does not count as handled (its key is forgotten).
async fn router_handles_a_repeat_once(name: &str) {
    let db = db(name);
    let store = SqlDedupStore::new(&SqlPubSub::connect(&db.url, config("msdd_router_")).await.unwrap());
    let rec = Recording::new();
    let input = crate::common::topic("dedup-sql");
    let (calls, handled) = (Arc::new(AtomicU32::new(0)), Arc::new(Mutex::new(Vec::new())));
    let dedup = Deduplicator::new(Duration::from_secs(3600)).store(Arc::new(store));
    let router = App::new()
        .pubsub(rec.clone())
        .route(Route::new("dedup", &input, failing_once(calls.clone(), handled.clone())).layer(dedup))
        .build()
        .unwrap();
    let task = tokio::spawn({
        let router = router.clone();
        async move { router.run().await }
    });
    within("router running", router.running()).await;

    let repeated = Message::new(r#"{"m":1}"#);
    rec.inner.publish(&input, repeated.clone()).await.unwrap();
    rec.inner.publish(&input, repeated).await.unwrap();
    rec.inner.publish(&input, Message::new(r#"{"n":1}"#)).await.unwrap();
    // The first call fails (nacked, redelivered); then each message is handled once, and the
    // other copy of the repeated one is acked without a call.
    rec.log
        .wait_for("3 acks", |ev| ev.iter().filter(|e| matches!(e, Event::Acked { .. })).count() == 3)
        .await;
    router.shutdown();
    within("router stops", task).await.unwrap().unwrap();

    let mut handled = handled.lock().clone();
    handled.sort();
    assert_eq!(handled, [r#"{"m":1}"#, r#"{"n":1}"#], "each message handled once");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two handlings and the failed first call");
    assert_eq!(rec.log.count(|e| matches!(e, Event::Nacked { .. })), 1);
    assert_eq!(rec.log.count(|e| matches!(e, Event::Acked { .. })), 3);
}

/// The `AttemptStore` contract, through a store connected by URL.
async fn attempts_keep_the_contract(name: &str) {
    let db = db(name);
    let store = SqlAttemptStore::connect(&db.url, config("msat_contract_")).await.unwrap();
    check_attempt_store(Arc::new(store), &unique(&format!("{name}-contract-"))).await.unwrap();
}

/// Two stores with pools of their own (two processes) on one table, created concurrently by
/// both, count the same deliveries; rows expire and are purged.
async fn attempts_are_shared_between_stores(name: &str) {
    let db = db(name);
    let prefix = unique("msat_");
    let a = SqlAttemptStore::connect(&db.url, config(&prefix)).await.unwrap();
    let b = SqlAttemptStore::new(&SqlPubSub::connect(&db.url, config(&prefix)).await.unwrap());
    assert_eq!(a.table(), format!("{prefix}attempts"));
    let (made_a, made_b) = tokio::join!(a.ensure_schema(), b.ensure_schema());
    made_a.unwrap();
    made_b.unwrap();

    let long = Duration::from_secs(60);
    let key = "handler:0195b2c4-long-key-".repeat(20);
    assert_eq!(a.record(&key, long).await.unwrap(), 1);
    assert_eq!(b.record(&key, long).await.unwrap(), 2, "counted through the other store");
    assert_eq!(a.record(&key, long).await.unwrap(), 3);
    b.forget(&key).await.unwrap();
    assert_eq!(a.record(&key, long).await.unwrap(), 1, "forgotten through the other store");

    assert_eq!(a.record("short", Duration::from_millis(1)).await.unwrap(), 1);
    let raw = Raw::connect(&db.url).await;
    assert_eq!(raw.count(a.table()).await, 2);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut purged = 0;
    while purged == 0 {
        assert!(tokio::time::Instant::now() < deadline, "`short` was never purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
        purged = a.purge_expired().await.unwrap();
    }
    assert_eq!(purged, 1, "only the expired row");
    assert_eq!(raw.count(a.table()).await, 1);
    raw.drop_table(a.table()).await;
}

macro_rules! dedup_tests {
    ($module:ident, $feature:literal) => {
        #[cfg(feature = $feature)]
        mod $module {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keeps_the_contract() {
                super::keeps_the_contract(stringify!($module)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shares_keys_between_stores() {
                super::shares_keys_between_stores(stringify!($module)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn races_an_expired_key_once() {
                super::races_an_expired_key_once(stringify!($module)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn purges_expired_rows_only() {
                super::purges_expired_rows_only(stringify!($module)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn router_handles_a_repeat_once() {
                super::router_handles_a_repeat_once(stringify!($module)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn attempts_keep_the_contract() {
                super::attempts_keep_the_contract(stringify!($module)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn attempts_are_shared_between_stores() {
                super::attempts_are_shared_between_stores(stringify!($module)).await;
            }
        }
    };
}

dedup_tests!(sqlite, "sqlite");
dedup_tests!(postgres, "postgres");
dedup_tests!(mysql, "mysql");
