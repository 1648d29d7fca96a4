//! Sagas on the SQL backend's database (SQLite, PostgreSQL, MySQL / MariaDB): a checkout flow
//! whose state, taken messages and sent commands commit together; timeouts relayed from the
//! database, also across a restart of the app; concurrent messages of one instance, each taken
//! once; a finished instance archived.
//!
//! Topics are fixed (they come from the types); every instance is named by a correlation id of
//! this run, so what an earlier, interrupted run left is acked and ignored.
//!
//! And the same checkouts with messages on NATS JetStream, the instances in memory.
#![cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql", feature = "nats"))]

use std::sync::Mutex;
use std::time::Duration;

use millstream::keys::{message::TYPE, CORRELATION_ID};
use millstream::middleware::CorrelationId;
use millstream::prelude::*;
use millstream::saga::SagaOutcome;
#[cfg(feature = "sql")]
use millstream::saga::{SagaKey, SagaLoad, SagaStore};
use millstream::{EventBus, Publisher, Saga, Sagas};
#[cfg(feature = "sql")]
use millstream::{SqlPubSub, SqlSagaStore, Subscriber};

use crate::common::eventually;

pub(crate) mod checkout {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "sagasql.orders")]
    pub(crate) struct OrderPlaced {
        pub(crate) cents: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::command(topic = "sagasql.charge")]
    pub(crate) struct ChargeCard {
        pub(crate) cents: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "sagasql.payments")]
    pub(crate) struct PaymentAccepted {}

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "sagasql.payments")]
    pub(crate) struct PaymentDeclined {}

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::command(topic = "sagasql.cancel")]
    pub(crate) struct CancelOrder {}

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "sagasql.timeouts")]
    pub(crate) struct PaymentOverdue {}

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "sagasql.notes")]
    pub(crate) struct Noted {}

    /// Declined above this; no answer at all at `SILENT` and `PATIENT` (which sets no timeout).
    pub(crate) const LIMIT: u64 = 10_000;
    pub(crate) const SILENT: u64 = 777;
    pub(crate) const PATIENT: u64 = 778;
    /// How long an unanswered payment is waited for.
    pub(crate) const PATIENCE: Duration = Duration::from_millis(800);

    #[derive(Default, Serialize, Deserialize, Debug)]
    #[millstream::saga(name = "sagasql.checkout")]
    pub(crate) struct Checkout {
        pub(crate) cents: u64,
        pub(crate) notes: u32,
    }

    #[millstream::saga_handler(start)]
    pub(crate) async fn placed(saga: &mut Saga<Checkout>, event: OrderPlaced) -> millstream::Result<()> {
        saga.cents = event.cents;
        saga.send(&ChargeCard { cents: event.cents })?;
        saga.compensate(&CancelOrder {})?;
        if event.cents == PATIENT {
            return Ok(());
        }
        saga.timeout_after(PATIENCE, &PaymentOverdue {})
    }

    #[millstream::saga_handler]
    pub(crate) async fn accepted(saga: &mut Saga<Checkout>, _: PaymentAccepted) {
        saga.complete();
    }

    #[millstream::saga_handler]
    pub(crate) async fn declined(saga: &mut Saga<Checkout>, _: PaymentDeclined) {
        saga.fail("payment declined");
    }

    #[millstream::saga_handler]
    pub(crate) async fn overdue(saga: &mut Saga<Checkout>, _: PaymentOverdue) {
        saga.fail("payment overdue");
    }

    /// Counts notes: many of them for one instance at once, on 8 lanes.
    #[millstream::saga_handler(concurrency = 8)]
    pub(crate) async fn noted(saga: &mut Saga<Checkout>, _: Noted) {
        saga.notes += 1;
    }

    #[millstream::command_handler]
    pub(crate) async fn charge(command: ChargeCard, events: EventBus) -> millstream::Result<()> {
        match command.cents {
            SILENT | PATIENT => Ok(()),
            cents if cents > LIMIT => events.publish(&PaymentDeclined {}).await,
            _ => events.publish(&PaymentAccepted {}).await,
        }
    }

    /// The correlation ids of the orders cancelled.
    pub(crate) static CANCELLED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    #[millstream::command_handler]
    pub(crate) async fn cancel(_: CancelOrder, meta: Metadata) {
        CANCELLED.lock().unwrap().push(meta.get(CORRELATION_ID).unwrap_or_default().to_owned());
    }
}

use checkout::*;

#[cfg(feature = "sql")]
async fn app(pubsub: &SqlPubSub, store: &SqlSagaStore) -> millstream::Router {
    App::from_registry()
        .module_prefix(module_path!().to_owned() + "::checkout")
        .pubsub(pubsub.clone())
        .layer(CorrelationId)
        .state(Sagas::new(store.clone()))
        .start()
        .await
        .expect("start")
}

fn run_id(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::now_v7().simple())
}

#[cfg(feature = "sql")]
async fn place(pubsub: &SqlPubSub, id: &str, cents: u64) {
    let message = Message::new(serde_json::to_vec(&OrderPlaced { cents }).unwrap())
        .with_header(CORRELATION_ID, id.to_owned())
        .with_header(TYPE, "OrderPlaced");
    pubsub.publish("sagasql.orders", message).await.expect("publish");
}

fn cancelled(id: &str) -> usize {
    CANCELLED.lock().unwrap().iter().filter(|c| *c == id).count()
}

#[cfg(feature = "sql")]
/// Waits until the instance `id` has finished; returns how.
async fn finished(store: &SqlSagaStore, id: &str) -> (SagaOutcome, Option<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(done) = store.finished("sagasql.checkout", id).await.expect("read") {
            return done;
        }
        assert!(tokio::time::Instant::now() < deadline, "instance {id} did not finish within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the instance at `key` runs.
#[cfg(feature = "sql")]
async fn started(store: &SqlSagaStore, key: SagaKey<'_>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !matches!(store.load(key, "-").await.unwrap(), SagaLoad::Running { .. }) {
        assert!(tokio::time::Instant::now() < deadline, "instance {} did not start within 60 s", key.id);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(feature = "sql")]
/// Paid, declined (compensated) and unanswered (timed out, compensated) checkouts.
async fn checkouts_finish_and_compensate(pubsub: SqlPubSub) {
    let store = SqlSagaStore::new(&pubsub).deadline_poll(Duration::from_millis(50)).keep_finished_state(true);
    let router = app(&pubsub, &store).await;
    let (paid, declined, silent) = (run_id("paid"), run_id("declined"), run_id("silent"));
    place(&pubsub, &paid, 100).await;
    place(&pubsub, &declined, LIMIT + 1).await;
    place(&pubsub, &silent, SILENT).await;

    let (outcome, state) = finished(&store, &paid).await;
    assert_eq!(outcome, SagaOutcome::Completed);
    let state: serde_json::Value = serde_json::from_str(&state.expect("kept")).unwrap();
    assert_eq!(state["cents"], 100, "the last state is archived");
    assert_eq!(finished(&store, &declined).await.0, SagaOutcome::Failed("payment declined".into()));
    assert_eq!(finished(&store, &silent).await.0, SagaOutcome::Failed("payment overdue".into()));
    eventually("the compensations", || cancelled(&declined) == 1 && cancelled(&silent) == 1).await;
    assert_eq!(cancelled(&paid), 0);

    // The paid checkout's timeout was dropped with it: once it would have been due, the relay
    // has published nothing for it.
    tokio::time::sleep(PATIENCE).await;
    assert_eq!(store.fire_due_deadlines().await.unwrap(), 0);
    router.close().await.expect("close");
}

#[cfg(feature = "sql")]
/// Many messages of one instance at once: each commit names the version it read; the losers are
/// redelivered and run again on the new state; every note counts once.
async fn concurrent_messages_count_once(pubsub: SqlPubSub) {
    const NOTES: u32 = 40;
    let store = SqlSagaStore::new(&pubsub);
    let router = app(&pubsub, &store).await;
    let id = run_id("notes");
    place(&pubsub, &id, PATIENT).await;
    let notes: Vec<Message> = (0..NOTES)
        .map(|_| Message::new("{}").with_header(CORRELATION_ID, id.clone()).with_header(TYPE, "Noted"))
        .collect();
    // (The notes may come before the instance exists: those are acked unhandled, so wait.)
    let key = SagaKey { saga: "sagasql.checkout", id: &id };
    started(&store, key).await;
    pubsub.publish_batch("sagasql.notes", notes).await.expect("publish");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let count = loop {
        let count = match store.load(key, "-").await.unwrap() {
            SagaLoad::Running { state, .. } => {
                serde_json::from_str::<serde_json::Value>(&state).unwrap()["notes"].as_u64().unwrap()
            }
            other => panic!("the instance should run: {other:?}"),
        };
        if count >= u64::from(NOTES) || tokio::time::Instant::now() > deadline {
            break count;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(count, u64::from(NOTES));
    router.close().await.expect("close");
}

#[cfg(feature = "sqlite")]
fn sqlite_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("millstream-saga-{what}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checkouts() {
    let dir = sqlite_dir("flow");
    let pubsub =
        SqlPubSub::open_sqlite(dir.join("db.sqlite"), millstream::SqlConfig::default()).await.unwrap();
    checkouts_finish_and_compensate(pubsub).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_messages() {
    let dir = sqlite_dir("notes");
    let pubsub =
        SqlPubSub::open_sqlite(dir.join("db.sqlite"), millstream::SqlConfig::default()).await.unwrap();
    concurrent_messages_count_once(pubsub).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A timeout is kept in the database: the app stops before it is due, a new app (a new process,
/// as far as the database can tell) publishes it and the saga is compensated.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_timeout_survives_a_restart() {
    let dir = sqlite_dir("restart");
    let path = dir.join("db.sqlite");
    let id = run_id("restart");
    {
        let pubsub = SqlPubSub::open_sqlite(&path, millstream::SqlConfig::default()).await.unwrap();
        let store = SqlSagaStore::new(&pubsub).deadline_poll(Duration::from_secs(3600));
        let router = app(&pubsub, &store).await;
        place(&pubsub, &id, SILENT).await;
        started(&store, SagaKey { saga: "sagasql.checkout", id: &id }).await;
        router.close().await.expect("close");
    }
    let pubsub = SqlPubSub::open_sqlite(&path, millstream::SqlConfig::default()).await.unwrap();
    let store = SqlSagaStore::new(&pubsub).deadline_poll(Duration::from_millis(50));
    let router = app(&pubsub, &store).await;
    assert_eq!(finished(&store, &id).await.0, SagaOutcome::Failed("payment overdue".into()));
    eventually("the compensation", || cancelled(&id) == 1).await;
    router.close().await.expect("close");
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "postgres")]
async fn postgres(prefix: &str) -> SqlPubSub {
    let url = std::env::var("MILLSTREAM_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    SqlPubSub::connect(&url, millstream::SqlConfig::default().table_prefix(prefix)).await.expect("connect")
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_checkouts() {
    checkouts_finish_and_compensate(postgres("mssaga_flow_").await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_messages() {
    concurrent_messages_count_once(postgres("mssaga_notes_").await).await;
}

#[cfg(feature = "mysql")]
async fn mysql(prefix: &str) -> SqlPubSub {
    let url = std::env::var("MILLSTREAM_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    SqlPubSub::connect(&url, millstream::SqlConfig::default().table_prefix(prefix)).await.expect("connect")
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_checkouts() {
    checkouts_finish_and_compensate(mysql("mssaga_flow_").await).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_concurrent_messages() {
    concurrent_messages_count_once(mysql("mssaga_notes_").await).await;
}

#[cfg(feature = "sql")]
/// The store's own contract: a commit at a stale version, or of a message already taken, writes
/// and publishes nothing; a finished instance is reported finished.
async fn stale_commits_conflict(pubsub: SqlPubSub) {
    use millstream::saga::{SagaCommit, SagaMessage};
    let store = SqlSagaStore::new(&pubsub);
    let id = run_id("stale");
    let topic = format!("sagasql.stale.{}", uuid::Uuid::now_v7().simple());
    let key = SagaKey { saga: "sagasql.stale", id: &id };
    let commit = |message_id: &'static str, version: Option<u64>, state: &str| SagaCommit {
        key,
        message_id,
        version,
        state: state.to_owned(),
        send: vec![SagaMessage { topic: topic.clone(), message: Message::new(message_id) }],
        compensations: Vec::new(),
        deadlines: Vec::new(),
        finish: None,
    };
    assert!(store.commit(commit("m1", None, "1")).await.unwrap(), "a new instance");
    assert!(!store.commit(commit("m1", None, "x")).await.unwrap(), "it exists already");
    assert!(!store.commit(commit("m1", Some(1), "x")).await.unwrap(), "m1 was taken");
    assert!(store.commit(commit("m2", Some(1), "2")).await.unwrap());
    assert!(!store.commit(commit("m3", Some(1), "x")).await.unwrap(), "version 1 is stale");
    assert_eq!(
        store.load(key, "m2").await.unwrap(),
        SagaLoad::Running { state: "2".into(), version: 2, seen: true }
    );
    let mut finish = commit("m4", Some(2), "3");
    finish.finish = Some(SagaOutcome::Completed);
    assert!(store.commit(finish).await.unwrap());
    assert_eq!(store.load(key, "m5").await.unwrap(), SagaLoad::Finished(SagaOutcome::Completed));

    // Only the committed steps' messages were published, in order.
    let mut subscription = pubsub
        .subscribe(
            &topic,
            millstream::SubscribeOptions::default().start(millstream::pubsub::StartFrom::Earliest),
        )
        .await
        .expect("subscribe");
    let mut payloads = Vec::new();
    while payloads.len() < 3 {
        let delivery = crate::common::within("a message", subscription.next()).await.unwrap().unwrap();
        payloads.push(String::from_utf8(delivery.message().payload().to_vec()).unwrap());
        delivery.ack().await.unwrap();
    }
    assert_eq!(payloads, ["m1", "m2", "m4"]);
    let more = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
    assert!(more.is_err(), "nothing else: {more:?}");
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stale_commits() {
    let dir = sqlite_dir("stale");
    let pubsub =
        SqlPubSub::open_sqlite(dir.join("db.sqlite"), millstream::SqlConfig::default()).await.unwrap();
    stale_commits_conflict(pubsub).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stale_commits() {
    stale_commits_conflict(postgres("mssaga_stale_").await).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_stale_commits() {
    stale_commits_conflict(mysql("mssaga_stale_").await).await;
}

/// The checkouts with their messages on NATS and their instances in memory (`Sagas::memory`):
/// the steps' commands go through NATS, the timeout through a tokio timer.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_checkouts_with_the_memory_store() {
    let _lock = crate::support::nats::shared().await;
    let url = std::env::var("MILLSTREAM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let config = millstream::NatsConfig::default().stream_prefix("MSTEST_");
    let pubsub = millstream::NatsPubSub::connect(&url, config).await.expect("connect");
    let sagas = Sagas::memory();
    let router = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::checkout")
        .pubsub(pubsub.clone())
        .layer(CorrelationId)
        .state(sagas.clone())
        .start()
        .await
        .expect("start");
    let place = |id: String, cents: u64| {
        let pubsub = pubsub.clone();
        async move {
            let message = Message::new(serde_json::to_vec(&OrderPlaced { cents }).unwrap())
                .with_header(CORRELATION_ID, id)
                .with_header(TYPE, "OrderPlaced");
            pubsub.publish("sagasql.orders", message).await.expect("publish");
        }
    };
    let (paid, declined, silent) = (run_id("paid"), run_id("declined"), run_id("silent"));
    place(paid.clone(), 100).await;
    place(declined.clone(), LIMIT + 1).await;
    place(silent.clone(), SILENT).await;
    let store = sagas.memory_store().expect("memory");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let outcome = |id: String| async move { store.finished("sagasql.checkout", &id).await };
    loop {
        let done =
            [outcome(paid.clone()).await, outcome(declined.clone()).await, outcome(silent.clone()).await];
        if done.iter().all(Option::is_some) {
            assert_eq!(
                done,
                [
                    Some(SagaOutcome::Completed),
                    Some(SagaOutcome::Failed("payment declined".into())),
                    Some(SagaOutcome::Failed("payment overdue".into())),
                ]
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the checkouts did not finish: {done:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("the compensations", || cancelled(&declined) == 1 && cancelled(&silent) == 1).await;
    assert_eq!(cancelled(&paid), 0);
    router.close().await.expect("close");
}
