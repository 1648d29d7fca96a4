//! Commands and events end to end on real backends: SQLite (embedded), PostgreSQL and NATS
//! JetStream. A command handler turns each `Open` into an `Opened` event; a second event type
//! (`Noted`) shares the events' topic; the `Opened` handler must see every `Opened` of this run
//! once, with its type in metadata, and skip the `Noted` ones; an event group (two handlers, one
//! group, one subscription) must see both types in the topic's order.
//!
//! Topics are fixed (they come from the types), so a run tells its own messages apart by a run id:
//! whatever an earlier, interrupted run left on a durable backend is acked and ignored.
#![cfg(any(feature = "sqlite", feature = "postgres", feature = "nats"))]

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use millstream::keys::message::TYPE;
use millstream::prelude::*;
use millstream::PubSub;

mod flow {
    use super::*;

    #[derive(Serialize, Deserialize)]
    #[millstream::command(topic = "cqrs-e2e.open")]
    pub(crate) struct Open {
        pub(crate) run: String,
        pub(crate) id: u64,
    }

    #[derive(Serialize, Deserialize)]
    #[millstream::event(topic = "cqrs-e2e.events")]
    pub(crate) struct Opened {
        pub(crate) run: String,
        pub(crate) id: u64,
    }

    #[derive(Serialize, Deserialize)]
    #[millstream::event(topic = "cqrs-e2e.events")]
    pub(crate) struct Noted {
        pub(crate) run: String,
        pub(crate) id: u64,
    }

    /// `(run, id, type in metadata)` of every `Opened` handled.
    pub(crate) static SEEN: Mutex<Vec<(String, u64, Option<String>)>> = Mutex::new(Vec::new());

    #[millstream::command_handler]
    pub(crate) async fn open(command: Open, events: EventBus) -> Result<Opened> {
        events.publish(&Noted { run: command.run.clone(), id: command.id }).await?;
        Ok(Opened { run: command.run, id: command.id })
    }

    /// `(run, id, type)` of every event the projection (an event group: one subscription for
    /// both types) handled, in its order.
    pub(crate) static PROJECTED: Mutex<Vec<(String, u64, &'static str)>> = Mutex::new(Vec::new());

    #[millstream::event_handler(group = "cqrs-e2e.projection")]
    pub(crate) async fn project_noted(event: Noted) {
        PROJECTED.lock().unwrap().push((event.run, event.id, "noted"));
    }

    #[millstream::event_handler(group = "cqrs-e2e.projection")]
    pub(crate) async fn project_opened(event: Opened) {
        PROJECTED.lock().unwrap().push((event.run, event.id, "opened"));
    }

    #[millstream::event_handler]
    pub(crate) async fn opened(event: Opened, meta: Metadata) {
        let kind = meta.get(TYPE).map(str::to_owned);
        SEEN.lock().unwrap().push((event.run, event.id, kind));
    }
}

const COUNT: u64 = 20;

async fn flow_runs(pubsub: impl PubSub + Clone) {
    use flow::*;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let router = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::flow")
        .pubsub(pubsub.clone())
        .start()
        .await
        .expect("start");
    let commands = CommandBus::new(pubsub.clone());
    for id in 0..COUNT {
        commands.send(&Open { run: run.clone(), id }).await.expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mine = loop {
        let mine: Vec<_> = SEEN.lock().unwrap().iter().filter(|(r, _, _)| *r == run).cloned().collect();
        if mine.len() as u64 >= COUNT || Instant::now() > deadline {
            break mine;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ids: BTreeSet<u64> = mine.iter().map(|(_, id, _)| *id).collect();
    assert_eq!(ids, (0..COUNT).collect(), "every Opened of this run handled: {mine:?}");
    assert!(mine.iter().all(|(_, _, kind)| kind.as_deref() == Some("Opened")), "{mine:?}");
    // The projection saw both types in the topic's order: each command's Noted, then its Opened.
    let projected = || -> Vec<(u64, &'static str)> {
        PROJECTED
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _, _)| *r == run)
            .map(|(_, id, kind)| (*id, *kind))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while projected().len() < 2 * COUNT as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected: Vec<_> = (0..COUNT).flat_map(|id| [(id, "noted"), (id, "opened")]).collect();
    assert_eq!(projected(), expected);
    router.close().await.expect("close");
    let mine = SEEN.lock().unwrap().iter().filter(|(r, _, _)| *r == run).count();
    assert_eq!(mine as u64, COUNT, "each handled once (no redelivery of an acked one)");
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite() {
    let dir = std::env::temp_dir().join(format!("millstream-cqrs-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let pubsub = millstream::SqlPubSub::open_sqlite(dir.join("db.sqlite"), millstream::SqlConfig::default())
        .await
        .expect("open");
    flow_runs(pubsub).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let url = std::env::var("MILLSTREAM_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let config = millstream::SqlConfig::default().table_prefix("mscqrs_");
    let pubsub = millstream::SqlPubSub::connect(&url, config).await.expect("connect");
    flow_runs(pubsub).await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats() {
    let _lock = crate::support::nats::shared().await;
    let url = std::env::var("MILLSTREAM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let config = millstream::NatsConfig::default().stream_prefix("MSTEST_");
    let pubsub = millstream::NatsPubSub::connect(&url, config).await.expect("connect");
    flow_runs(pubsub).await;
}
