//! The outbox forwarder's relay throughput beside the SQL backend's own publish, in one run
//! (issue 19, Bench): can a `Forwarder` keep up with what an application writes to its outbox?
//!
//! ```text
//! cargo run --release -p millstream-bench --features sqlite --bin forwarder-bench -- \
//!     [--messages 20000] [--runs 3]
//! ```
//!
//! On a fresh SQLite file per run (WAL, the backend's defaults), `messages` messages of the same
//! ~100-byte payload:
//! - **raw**: the SQL backend's publish, in batches of 100 (`publish_batch`: one transaction
//!   each), the rate at which an application could fill the outbox;
//! - **millstream**: the forwarder relaying them, already written, to an in-memory target (so
//!   that no broker's cost hides the relay's): an app with one `Forwarder` route, from its start
//!   until the target's subscriber has received every message, in order.
//!
//! `millstream / raw` above 1 means the forwarder drains an outbox faster than it can be
//! filled.

use std::sync::Arc;
use std::time::Instant;

use millstream::router::Forwarder;
use millstream::{App, MemoryPubSub, Message, Publisher, SqlConfig, SqlPubSub, SubscribeOptions, Subscriber};

mod side_by_side;

use side_by_side::{rate, unique, Args, Bench, BoxError, PAYLOAD};

const BATCH: usize = 100;

struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn outbox() -> Result<(SqlPubSub, Scratch), BoxError> {
    let dir = std::env::temp_dir().join(unique("millstream-forwarder-bench"));
    std::fs::create_dir_all(&dir)?;
    let pubsub = SqlPubSub::open_sqlite(dir.join("outbox.db"), SqlConfig::default())
        .await
        .map_err(|e| e.into_std())?;
    Ok((pubsub, Scratch(dir)))
}

async fn fill(pubsub: &SqlPubSub, topic: &str, messages: usize) -> Result<(), BoxError> {
    let mut left = messages;
    while left > 0 {
        let n = left.min(BATCH);
        let batch = (0..n).map(|_| Message::new(PAYLOAD)).collect();
        pubsub.publish_batch(topic, batch).await.map_err(|e| e.into_std())?;
        left -= n;
    }
    Ok(())
}

/// The forwarder relaying `messages` already in the outbox.
async fn relay_run(messages: usize) -> Result<[f64; 1], BoxError> {
    let (source, _scratch) = outbox().await?;
    let topic = unique("outbox");
    fill(&source, &topic, messages).await?;
    let target = MemoryPubSub::new().capacity(messages + 1);
    let mut received =
        target.subscribe(&topic, SubscribeOptions::group("reader")).await.map_err(|e| e.into_std())?;
    let started = Instant::now();
    let app = App::new()
        .pubsub(MemoryPubSub::new())
        .forward(Forwarder::new(Arc::new(source), Arc::new(target.clone())).topic(&topic));
    let router = app.start().await.map_err(|e| e.into_std())?;
    for _ in 0..messages {
        let delivery =
            received.next().await.ok_or("the target's subscription ended")?.map_err(|e| e.into_std())?;
        delivery.ack().await.map_err(|e| e.into_std())?;
    }
    let relayed = rate(messages, started.elapsed());
    router.close().await.map_err(|e| e.into_std())?;
    Ok([relayed])
}

/// The SQL backend publishing `messages` in batches: the outbox's write rate.
async fn publish_run(messages: usize) -> Result<[f64; 1], BoxError> {
    let (pubsub, _scratch) = outbox().await?;
    let topic = unique("outbox");
    pubsub.publish(&topic, Message::new(PAYLOAD)).await.map_err(|e| e.into_std())?;
    let started = Instant::now();
    fill(&pubsub, &topic, messages).await?;
    let published = rate(messages, started.elapsed());
    Publisher::close(&pubsub).await.map_err(|e| e.into_std())?;
    Ok([published])
}

fn main() -> std::process::ExitCode {
    let args = Args::parse("--unused", "", &[]).map(|mut args| {
        if !std::env::args().any(|a| a == "--messages") {
            args.messages = 20_000;
        }
        args
    });
    side_by_side::main_with("forwarder-bench", args, async |args| {
        let bench = Bench {
            name: "forwarder-bench",
            raw: "SQL publish (batches of 100)",
            setting: format!("{} messages of {} bytes, SQLite", args.messages, PAYLOAD.len()),
            scenarios: ["forwarder relay (SQLite to memory) vs outbox write"],
        };
        let messages = args.messages;
        bench.run(args.runs, async || relay_run(messages).await, async || publish_run(messages).await).await
    })
}
