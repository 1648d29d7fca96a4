//! `FanOut` over SQLite: three handlers, each in its own group, read one topic through a single
//! upstream consumer group; each sees every message, in order.
#![cfg(feature = "sqlite")]

use std::sync::Arc;
use std::time::Duration;

use millstream::fanout::FanOut;
use millstream::{App, Json, Publisher, Route, SqlConfig, SqlPubSub};
use parking_lot::Mutex;

use crate::common::{start, stop, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_share_one_upstream_group_and_each_sees_every_message() {
    let dir = std::env::temp_dir().join(format!("millstream-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.join("fanout.db").display());
    let config = SqlConfig::default().poll_interval(Duration::from_millis(20));
    let broker = SqlPubSub::connect(&url, config).await.unwrap();
    let fan_out = FanOut::new(Arc::new(broker.clone()), "svc");
    let seen: Arc<Mutex<Vec<(&'static str, u64)>>> = Arc::default();
    let handler = |name: &'static str| {
        let seen = seen.clone();
        move |Json(n): Json<u64>| {
            seen.lock().push((name, n));
            std::future::ready(Ok::<(), millstream::Error>(()))
        }
    };
    let mut app = App::new().pubsub_parts(Arc::new(broker.clone()), Arc::new(fan_out));
    for name in ["cache", "projection", "notifier"] {
        app = app.route(Route::new(name, "fanout.orders", handler(name)));
    }
    let router = app.build().unwrap();
    let task = start(&router).await;
    for n in 0..50u64 {
        broker.publish("fanout.orders", millstream::Message::new(n.to_string())).await.unwrap();
    }
    within("every handler sees every message", async {
        while seen.lock().len() < 150 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for name in ["cache", "projection", "notifier"] {
        let got: Vec<u64> = seen.lock().iter().filter(|(who, _)| *who == name).map(|(_, n)| *n).collect();
        assert_eq!(got, (0..50).collect::<Vec<_>>(), "{name}");
    }
    stop(&router, task).await;
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let groups: Vec<String> =
        sqlx::query_scalar("SELECT grp FROM millstream_groups WHERE topic = 'fanout.orders'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(groups, ["svc"], "one upstream group for three handlers");
    let _ = std::fs::remove_dir_all(dir);
}
