//! The durable delay stores against their real servers: the `DelayStore` contract on SQLite,
//! PostgreSQL, MariaDB and Redis; a delayed message that outlives the process that scheduled it
//! (SQLite, PostgreSQL, Redis); and an app on NATS whose long retries are requeued through Redis
//! with true attempt counts.
#![cfg(feature = "conformance")]
// Helpers serve only some backends: a build with a few of them leaves the rest unused.
#![cfg_attr(
    not(all(
        feature = "sqlite",
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "nats"
    )),
    allow(dead_code, unused_imports)
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use millstream::conformance::check_delay_store;
use millstream::delay::{DelayStore, Scheduler};
use millstream::{Message, Publisher, SubscribeOptions, Subscriber};

use crate::common::{next_message, unique, within};

/// A message scheduled through one scheduler, which then closes before it is due (its process
/// ends), is published by a new scheduler on a new connection to the same store (the next
/// process), not before its due time, once.
async fn outlives_its_process<P, S>(
    connect: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = (P, S)>>>,
) where
    P: Publisher + Subscriber + Clone,
    S: DelayStore,
{
    let topic = unique("delay.restart.");
    let (pubsub, store) = connect().await;
    let mut sub = pubsub.subscribe(&topic, SubscribeOptions::group("g")).await.unwrap();
    // A scope of this run's own: rows a failed earlier run left in the shared table stay apart.
    let scope = unique("restart-");
    let first = Scheduler::new(store, Arc::new(pubsub.clone())).scope(scope.clone());
    let started = Instant::now();
    let message = Message::new("from the first process").with_key("k");
    let id = message.id();
    first.publish_after(&topic, message, Duration::from_millis(1500)).await.unwrap();
    assert_eq!(first.pending().await.unwrap(), 1);
    first.close().await.unwrap();
    drop(first);

    let (pubsub2, store2) = connect().await;
    let second = Scheduler::new(store2, Arc::new(pubsub2)).scope(scope);
    second.start();
    let got = next_message(&mut sub).await;
    assert!(started.elapsed() >= Duration::from_millis(1500), "published after {:?}", started.elapsed());
    assert_eq!((got.id(), got.key()), (id, Some("k")));
    within("the store forgets it", async {
        while second.pending().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(tokio::time::timeout(Duration::from_millis(300), sub.next()).await.is_err(), "published twice");
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod sql {
    use super::*;
    use millstream::{SqlConfig, SqlDelayStore, SqlPubSub};

    fn url(name: &str) -> (String, Option<std::path::PathBuf>) {
        if name == "sqlite" {
            let dir = std::env::temp_dir().join(unique("millstream-delay-"));
            std::fs::create_dir_all(&dir).unwrap();
            (format!("sqlite:{}?mode=rwc", dir.join("delay.db").display()), Some(dir))
        } else {
            (crate::support::sql::url(name), None)
        }
    }

    fn config() -> SqlConfig {
        SqlConfig::default()
            .table_prefix("msdelay_")
            .max_connections(4)
            .poll_interval(Duration::from_millis(20))
    }

    pub(super) async fn keeps_the_contract(name: &str) {
        let (url, dir) = url(name);
        let pubsub = SqlPubSub::connect(&url, config()).await.unwrap();
        check_delay_store(Arc::new(SqlDelayStore::new(&pubsub)), &unique("contract-")).await.unwrap();
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    pub(super) async fn outlives(name: &str) {
        let (url, dir) = url(name);
        outlives_its_process(|| {
            let url = url.clone();
            Box::pin(async move {
                let pubsub = SqlPubSub::connect(&url, config()).await.unwrap();
                let store = SqlDelayStore::new(&pubsub);
                (pubsub, store)
            })
        })
        .await;
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    macro_rules! sql_delay_tests {
        ($module:ident, $feature:literal) => {
            #[cfg(feature = $feature)]
            mod $module {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn keeps_the_contract() {
                    super::keeps_the_contract(stringify!($module)).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn a_delayed_message_outlives_its_process() {
                    super::outlives(stringify!($module)).await;
                }
            }
        };
    }

    sql_delay_tests!(sqlite, "sqlite");
    sql_delay_tests!(postgres, "postgres");
    sql_delay_tests!(mysql, "mysql");
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use millstream::pubsub::redis::RedisDelayStore;

    fn url() -> String {
        std::env::var("MILLSTREAM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    async fn store(prefix: &str) -> RedisDelayStore {
        within("connect to Redis", RedisDelayStore::connect(&url()))
            .await
            .unwrap()
            .with_prefix(prefix.to_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_the_contract() {
        let prefix = unique("millstream-test:delay:");
        check_delay_store(Arc::new(store(&prefix).await), "contract").await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delayed_message_outlives_its_process() {
        let prefix = unique("millstream-test:delay-restart:");
        outlives_its_process(|| {
            let prefix = prefix.clone();
            Box::pin(async move {
                let config = millstream::RedisConfig::default();
                let pubsub = millstream::RedisPubSub::connect(&url(), config).await.unwrap();
                (pubsub, store(&prefix).await)
            })
        })
        .await;
    }

    /// A record written by something else does not decode: it is removed, and the valid message
    /// taken with it is still handed out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_record_is_removed_and_holds_up_nothing() {
        use millstream::delay::DelayedMessage;
        let prefix = unique("millstream-test:delay-corrupt:");
        let store = store(&prefix).await;
        let client = ::redis::Client::open(url()).unwrap();
        let mut raw = within("raw connection", client.get_multiplexed_async_connection()).await.unwrap();
        let member = format!("{:020}", 1u64 << 40);
        let _: () = ::redis::pipe()
            .cmd("ZADD")
            .arg(format!("{prefix}{{d:}}:due"))
            .arg(1)
            .arg(&member)
            .ignore()
            .cmd("HSET")
            .arg(format!("{prefix}{{d:}}:msg"))
            .arg(&member)
            .arg("not a record")
            .ignore()
            .query_async(&mut raw)
            .await
            .unwrap();
        let message = Message::new("valid");
        store
            .schedule("", vec![DelayedMessage { topic: "t".into(), message: message.clone(), due_ms: 2 }])
            .await
            .unwrap();
        let taken = store.take_due("", 10, 10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(taken.iter().map(|t| t.delayed.message.id()).collect::<Vec<_>>(), [message.id()]);
        assert_eq!(store.count("").await.unwrap(), 1, "the corrupt record is gone, the valid one leased");
        store.done("", &[taken[0].seq]).await.unwrap();
        let _: () = ::redis::cmd("DEL").arg(format!("{prefix}seq")).query_async(&mut raw).await.unwrap();
    }

    /// An app on NATS with its delays in Redis: a handler asking to be retried in 300 ms is
    /// requeued (not held in JetStream's ack-pending), and sees attempts 1, 2, 3.
    #[cfg(feature = "nats")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nats_app_requeues_long_retries_through_redis() {
        use millstream::router::RouterConfig;
        use millstream::{App, Attempt, Error, Json, Route};
        use parking_lot::Mutex;

        let _lock = crate::support::nats::shared().await;
        let nats_url =
            std::env::var("MILLSTREAM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        let pubsub = millstream::NatsPubSub::connect(
            &nats_url,
            millstream::NatsConfig::default().stream_prefix("MSTEST_"),
        )
        .await
        .expect("connect");
        let topic = unique("delay.requeue.");
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let handler = {
            let attempts = attempts.clone();
            move |_: Json<serde_json::Value>, Attempt(attempt): Attempt| {
                let attempts = attempts.clone();
                async move {
                    attempts.lock().push(attempt);
                    if attempt < 3 {
                        return Err(Error::msg("later").retry_after(Duration::from_millis(300)));
                    }
                    Ok(())
                }
            }
        };
        let prefix = unique("millstream-test:delay-nats:");
        let store = store(&prefix).await;
        let router = App::new()
            .pubsub(pubsub.clone())
            .delays(store.clone())
            .config(RouterConfig::default().requeue_after(Some(Duration::from_millis(100))))
            .route(Route::new("requeued", &topic, handler))
            .build()
            .unwrap();
        let task = crate::common::start(&router).await;
        pubsub.publish(&topic, Message::new("{}")).await.unwrap();
        within("three attempts", async {
            while attempts.lock().len() < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_eq!(*attempts.lock(), [1, 2, 3]);
        within("the store empties", async {
            while store.count("").await.unwrap() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        crate::common::stop(&router, task).await;
        let _ = pubsub.delete_topic(&topic).await;
    }
}
