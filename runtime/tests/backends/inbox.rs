//! The transactional inbox and outbox (`Tx`, `SqlInbox`): a handler's own writes, the message's
//! inbox key and its return values commit together, on SQLite, PostgreSQL and MariaDB, with the
//! messages consumed from another backend (in memory). A failure or a panic rolls everything
//! back; a redelivery of a handled message is acked without running the handler; an app missing
//! the inbox, or a handler asking for two transactions, does not build.
#![cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millstream::pubsub::sql::SqlInbox;
use millstream::{
    App, Json, MemoryPubSub, Message, MessageId, Publisher, Route, SqlConfig, SqlPubSub, State,
    SubscribeOptions, Subscriber, Tx,
};

use crate::common::{unique, within};

/// What the handler has been through: how many calls, and which messages failed once already.
#[derive(Clone, Default)]
struct Plan {
    calls: Arc<AtomicU32>,
    failed: Arc<Mutex<HashSet<u64>>>,
}

impl Plan {
    /// Whether `n` is to fail now: multiples of 5 fail (after their write) the first time, 7 panics
    /// the first time.
    fn first_time(&self, n: u64) -> bool {
        (n.is_multiple_of(5) || n == 7) && self.failed.lock().unwrap().insert(n)
    }
}

fn sql_config(prefix: &str) -> SqlConfig {
    SqlConfig::default().table_prefix(prefix).poll_interval(Duration::from_millis(20)).max_connections(4)
}

/// Expands the effectively-once test for one database: `$insert` writes one effect row (binds `n`).
macro_rules! inbox_test {
    ($name:ident, $feature:literal, $db:ty, $url:expr, $insert:literal) => {
        #[cfg(feature = $feature)]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let prefix = unique("msinbox_");
            let (sql, _dir) = connect($url, &prefix).await;
            let effects = format!("{prefix}effects");
            create_effects(&sql, &effects).await;
            let insert = format!($insert, effects = effects);

            async fn handle(
                n: u64,
                mut tx: Tx<$db>,
                State(plan): State<Plan>,
                State(insert): State<Arc<str>>,
            ) -> millstream::Result<Json<u64>> {
                plan.calls.fetch_add(1, Ordering::SeqCst);
                sqlx::query(&insert)
                    .bind(n as i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(millstream::Error::backend)?;
                if plan.first_time(n) {
                    if n == 7 {
                        panic!("the handler panics once on 7");
                    }
                    return Err(millstream::Error::msg(format!("{n} fails once")));
                }
                Ok(Json(n * 10))
            }

            let plan = Plan::default();
            let input = MemoryPubSub::new();
            let topic = unique("inbox.in.");
            let out = unique("inbox.out.");
            let app = App::new()
                .pubsub(input.clone())
                .state(SqlInbox::new(&sql))
                .state(plan.clone())
                .state(Arc::<str>::from(insert.as_str()))
                .config(millstream::RouterConfig::default().nack_delay(Some(Duration::from_millis(10))))
                .route(Route::new("bill", topic.as_str(), handle).publish(out.as_str()));
            let router = app.start().await.expect("the app builds and starts");
            let mut outputs = sql.subscribe(&out, SubscribeOptions::group("check")).await.unwrap();

            let messages: Vec<Message> = (1..=30u64).map(|n| Message::new(n.to_string())).collect();
            let ids: Vec<MessageId> = messages.iter().map(Message::id).collect();
            input.publish_batch(&topic, messages.clone()).await.unwrap();
            let mut seen = Vec::new();
            for _ in 0..30 {
                seen.push(next_number(&mut outputs).await);
            }
            seen.sort_unstable();
            assert_eq!(
                seen,
                (1..=30u64).map(|n| n * 10).collect::<Vec<_>>(),
                "each output once, in the outbox"
            );

            // The same ten messages again (a redelivery after their commit, say), then one new one:
            // only the new one runs the handler.
            let calls_before = plan.calls.load(Ordering::SeqCst);
            input.publish_batch(&topic, messages[..10].to_vec()).await.unwrap();
            input.publish(&topic, Message::new("1001")).await.unwrap();
            assert_eq!(next_number(&mut outputs).await, 10_010, "no output of the redelivered messages");
            assert_eq!(
                plan.calls.load(Ordering::SeqCst),
                calls_before + 1,
                "the handler ran for the new message only"
            );

            // 30 + 1 effects, once each: the failed and panicked calls' writes were rolled back.
            let (rows, distinct) = count_effects(&sql, &effects).await;
            assert_eq!((rows, distinct), (31, 31));
            // 30 messages, 6 of which failed once (5, 10, .., 30) and 1 panicked once (7), + 1.
            assert_eq!(plan.calls.load(Ordering::SeqCst), 30 + 7 + 1);
            let inbox = SqlInbox::new(&sql);
            assert!(inbox.contains("bill", "bill", &ids[4].to_string()).await.unwrap());
            assert!(!inbox.contains("another", "another", &ids[4].to_string()).await.unwrap());
            assert!(inbox.purge_older_than(Duration::from_secs(3600)).await.unwrap() == 0);

            within("the router stops", router.close()).await.unwrap();
            drop_tables(&sql, &prefix, &effects).await;
        }
    };
}

inbox_test!(
    effectively_once_on_sqlite,
    "sqlite",
    sqlx::Sqlite,
    "sqlite",
    "INSERT INTO {effects} (n) VALUES (?)"
);
inbox_test!(
    effectively_once_on_postgres,
    "postgres",
    sqlx::Postgres,
    "postgres",
    "INSERT INTO {effects} (n) VALUES ($1)"
);
inbox_test!(
    effectively_once_on_mariadb,
    "mysql",
    sqlx::MySql,
    "mysql",
    "INSERT INTO {effects} (n) VALUES (?)"
);

/// A SQL pub/sub for `which` ("sqlite": a fresh file in its own folder, returned to be removed).
async fn connect(which: &str, prefix: &str) -> (SqlPubSub, Option<TempDir>) {
    match which {
        "sqlite" => {
            let dir = TempDir(std::env::temp_dir().join(unique("millstream-inbox-")));
            std::fs::create_dir_all(&dir.0).unwrap();
            let url = format!("sqlite:{}?mode=rwc", dir.0.join("app.db").display());
            (SqlPubSub::connect(&url, sql_config(prefix)).await.unwrap(), Some(dir))
        }
        name => {
            (SqlPubSub::connect(&crate::support::sql::url(name), sql_config(prefix)).await.unwrap(), None)
        }
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn next_number(sub: &mut millstream::Subscription) -> u64 {
    let delivery = within("an output", sub.next()).await.expect("open").expect("delivery");
    let n = String::from_utf8_lossy(delivery.message().payload()).parse().expect("a number");
    delivery.ack().await.unwrap();
    n
}

/// Runs `statement` on the pub/sub's own database.
macro_rules! on_pool {
    ($sql:expr, |$pool:ident| $body:expr) => {
        async {
            #[cfg(feature = "sqlite")]
            if let Some($pool) = $sql.sqlite_pool() {
                return $body;
            }
            #[cfg(feature = "postgres")]
            if let Some($pool) = $sql.postgres_pool() {
                return $body;
            }
            #[cfg(feature = "mysql")]
            if let Some($pool) = $sql.mysql_pool() {
                return $body;
            }
            unreachable!("a pool of an enabled database")
        }
    };
}

async fn create_effects(sql: &SqlPubSub, table: &str) {
    let create = format!("CREATE TABLE {table} (n BIGINT NOT NULL)");
    on_pool!(sql, |pool| {
        sqlx::query(&create).execute(pool).await.unwrap();
    })
    .await
}

async fn count_effects(sql: &SqlPubSub, table: &str) -> (i64, i64) {
    let count = format!("SELECT COUNT(*), COUNT(DISTINCT n) FROM {table}");
    on_pool!(sql, |pool| sqlx::query_as::<_, (i64, i64)>(&count).fetch_one(pool).await.unwrap()).await
}

/// Drops the test's tables (the shared databases outlive the run).
async fn drop_tables(sql: &SqlPubSub, prefix: &str, effects: &str) {
    for table in [
        effects.to_owned(),
        format!("{prefix}inbox"),
        format!("{prefix}messages"),
        format!("{prefix}groups"),
        format!("{prefix}topics"),
    ] {
        let statement = format!("DROP TABLE IF EXISTS {table}");
        on_pool!(sql, |pool| {
            let _ = sqlx::query(&statement).execute(pool).await;
        })
        .await
    }
}

/// A handler with a retry topic: its stages share one inbox key. The message fails once, is
/// handled on the retry topic, and then comes again on the main topic (as after an ack lost
/// there): it is acked without running the handler.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stages_of_a_retry_topic_share_the_inbox_key() {
    let prefix = unique("msinbox_");
    let (sql, _dir) = connect("sqlite", &prefix).await;
    let effects = format!("{prefix}effects");
    create_effects(&sql, &effects).await;
    let calls = Arc::new(AtomicU32::new(0));

    async fn handle(
        n: u64,
        mut tx: Tx<sqlx::Sqlite>,
        State(calls): State<Arc<AtomicU32>>,
        State(insert): State<Arc<str>>,
    ) -> millstream::Result<()> {
        let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
        sqlx::query(&insert).bind(n as i64).execute(&mut *tx).await.map_err(millstream::Error::backend)?;
        if call == 1 {
            return Err(millstream::Error::msg("the first call fails"));
        }
        Ok(())
    }

    let input = MemoryPubSub::new();
    let topic = unique("inbox.retry.");
    let app = App::new()
        .pubsub(input.clone())
        .state(SqlInbox::new(&sql))
        .state(calls.clone())
        .state(Arc::<str>::from(format!("INSERT INTO {effects} (n) VALUES (?)").as_str()))
        .route(Route::new("bill", topic.as_str(), handle).retry_topics([Duration::from_millis(100)]));
    let router = app.start().await.unwrap();
    let message = Message::new("1");
    input.publish(&topic, message.clone()).await.unwrap();
    // Failed on the main topic, then handled on the retry topic.
    let handled = || async { count_effects(&sql, &effects).await.0 == 1 };
    within("handled on the retry topic", async {
        while !handled().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The same message on the main topic again, then another one behind it.
    input.publish(&topic, message).await.unwrap();
    input.publish(&topic, Message::new("2")).await.unwrap();
    within("the next message handled", async {
        while count_effects(&sql, &effects).await.0 < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    within("the router stops", router.close()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the redelivered message did not run the handler");
    assert_eq!(count_effects(&sql, &effects).await, (2, 2));
    drop_tables(&sql, &prefix, &effects).await;
}

/// A request to a transactional handler is answered after its commit, on the backend the
/// requester waits on (not through the outbox).
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_answered_after_the_commit() {
    let prefix = unique("msinbox_");
    let (sql, _dir) = connect("sqlite", &prefix).await;
    let effects = format!("{prefix}effects");
    create_effects(&sql, &effects).await;

    async fn times_ten(
        n: u64,
        mut tx: Tx<sqlx::Sqlite>,
        State(insert): State<Arc<str>>,
    ) -> millstream::Result<Json<u64>> {
        sqlx::query(&insert).bind(n as i64).execute(&mut *tx).await.map_err(millstream::Error::backend)?;
        Ok(Json(n * 10))
    }

    let broker = MemoryPubSub::new();
    let topic = unique("inbox.ask.");
    let router = App::new()
        .pubsub(broker.clone())
        .state(SqlInbox::new(&sql))
        .state(Arc::<str>::from(format!("INSERT INTO {effects} (n) VALUES (?)").as_str()))
        .route(Route::new("times_ten", topic.as_str(), times_ten).publish(format!("{topic}.out")))
        .start()
        .await
        .unwrap();
    let requester = millstream::Requester::connect(broker.clone()).await.unwrap();
    let answer: u64 = requester.request_to(&topic, &7u64, Duration::from_secs(30)).await.unwrap();
    assert_eq!(answer, 70);
    assert_eq!(count_effects(&sql, &effects).await, (1, 1));
    within("the router stops", router.close()).await.unwrap();
    drop_tables(&sql, &prefix, &effects).await;
}

#[cfg(feature = "sqlite")]
mod refused {
    use super::*;

    async fn sqlite() -> (SqlPubSub, Option<TempDir>) {
        connect("sqlite", "msinbox_").await
    }

    async fn one(_n: u64, _tx: Tx<sqlx::Sqlite>) {}

    async fn two(_n: u64, _a: Tx<sqlx::Sqlite>, _b: Tx<sqlx::Sqlite>) {}

    async fn delayed(n: u64, _tx: Tx<sqlx::Sqlite>) -> millstream::Delayed<Json<u64>> {
        millstream::Delayed::after(Duration::from_secs(1), Json(n))
    }

    fn build_error(app: App) -> String {
        match app.build() {
            Ok(_) => panic!("the app must not build"),
            Err(error) => error.to_string(),
        }
    }

    #[tokio::test]
    async fn an_app_without_an_inbox_does_not_build() {
        let app = App::new().pubsub(MemoryPubSub::new()).route(Route::new("one", "t", one));
        let error = build_error(app);
        assert!(error.contains("has no transactional inbox") && error.contains("SqlInbox::new"), "{error}");
    }

    #[tokio::test]
    async fn a_handler_with_two_transactions_does_not_build() {
        let (sql, _dir) = sqlite().await;
        let app = App::new()
            .pubsub(MemoryPubSub::new())
            .state(SqlInbox::new(&sql))
            .route(Route::new("two", "t", two));
        let error = build_error(app);
        assert!(error.contains("takes 2 transactions"), "{error}");
    }

    #[tokio::test]
    async fn a_transactional_handler_cannot_delay_its_outputs() {
        let (sql, _dir) = sqlite().await;
        let app = App::new()
            .pubsub(MemoryPubSub::new())
            .delays(millstream::MemoryDelayStore::new())
            .state(SqlInbox::new(&sql))
            .route(Route::new("delayed", "t", delayed).publish("later"));
        let error = build_error(app);
        assert!(error.contains("cannot delay it"), "{error}");
    }

    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn a_tx_of_another_database_does_not_build() {
        async fn pg(_n: u64, _tx: Tx<sqlx::Postgres>) {}
        let (sql, _dir) = sqlite().await;
        let app = App::new()
            .pubsub(MemoryPubSub::new())
            .state(SqlInbox::new(&sql))
            .route(Route::new("pg", "t", pg));
        let error = build_error(app);
        assert!(error.contains("SqlInbox is in a Sqlite database"), "{error}");
    }
}
