//! The transactional inbox and batch handlers, each beside the handler a user would write without
//! them, in one run (issue 19): what effectively-once costs, and what batching saves.
//!
//! ```text
//! cargo run --release -p millstream-bench --features sqlite --bin inbox-bench -- \
//!     [--messages 20000] [--runs 3]
//! ```
//!
//! On a fresh SQLite file per run (WAL, the backend's defaults), `messages` small JSON numbers are
//! published to the in-memory broker and handled by one handler that writes one row per message;
//! each side is timed from the first publish until every row is written:
//! - **raw**: a handler taking `State<SqlitePool>` that writes its row in a transaction of its own
//!   (begin, insert, commit): what a user writes without millstream's help;
//! - **inbox**: a handler taking `Tx<Sqlite>`: the same row, in the transaction that also records
//!   the message's inbox key (so a redelivery is recognised);
//! - **batch**: a batch handler (`batch = 100`) writing a whole batch's rows in one transaction.
//!
//! `inbox / raw` is the price of effectively-once processing (one more row per message, in the
//! same transaction); `batch / raw` what batching saves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millstream::pubsub::sql::sqlx::{self, Sqlite, SqlitePool};
use millstream::pubsub::sql::SqlInbox;
use millstream::{App, MemoryPubSub, Message, Publisher, Route, SqlConfig, SqlPubSub, State, Tx};

mod side_by_side;

use side_by_side::{rate, unique, Args, Bench, BoxError};

const INSERT: &str = "INSERT INTO rows (n) VALUES (?)";

/// Rows written so far.
#[derive(Clone, Default)]
struct Done(Arc<AtomicUsize>);

fn backend(error: sqlx::Error) -> millstream::Error {
    millstream::Error::backend(error)
}

async fn own_transaction(
    n: u64,
    State(pool): State<SqlitePool>,
    State(done): State<Done>,
) -> millstream::Result<()> {
    let mut tx = pool.begin().await.map_err(backend)?;
    sqlx::query(INSERT).bind(n as i64).execute(&mut *tx).await.map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    done.0.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn in_the_inbox(n: u64, mut tx: Tx<Sqlite>, State(done): State<Done>) -> millstream::Result<()> {
    sqlx::query(INSERT).bind(n as i64).execute(&mut *tx).await.map_err(backend)?;
    // (Counted before the commit: the last count comes a commit early, the same for every message.)
    done.0.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn batched(
    ns: Vec<u64>,
    State(pool): State<SqlitePool>,
    State(done): State<Done>,
) -> millstream::Result<()> {
    let mut tx = pool.begin().await.map_err(backend)?;
    for n in &ns {
        sqlx::query(INSERT).bind(*n as i64).execute(&mut *tx).await.map_err(backend)?;
    }
    tx.commit().await.map_err(backend)?;
    done.0.fetch_add(ns.len(), Ordering::Relaxed);
    Ok(())
}

struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy)]
enum Side {
    Raw,
    Inbox,
    Batch,
}

/// One side: a fresh database, the app with its one handler, `messages` published and handled.
async fn side(side: Side, messages: usize) -> Result<f64, BoxError> {
    let dir = std::env::temp_dir().join(unique("millstream-inbox-bench"));
    std::fs::create_dir_all(&dir)?;
    let _scratch = Scratch(dir.clone());
    let db =
        SqlPubSub::open_sqlite(dir.join("app.db"), SqlConfig::default()).await.map_err(|e| e.into_std())?;
    let pool = db.sqlite_pool().ok_or("a SQLite pool")?.clone();
    sqlx::query("CREATE TABLE rows (n INTEGER NOT NULL)").execute(&pool).await?;
    let inbox = SqlInbox::new(&db);
    inbox.ensure_schema().await.map_err(|e| e.into_std())?;
    let broker = MemoryPubSub::new().capacity(messages + 1);
    let done = Done::default();
    let topic = unique("numbers");
    let route = match side {
        Side::Raw => Route::new("handle", topic.as_str(), own_transaction),
        Side::Inbox => Route::new("handle", topic.as_str(), in_the_inbox),
        Side::Batch => {
            Route::batch("handle", topic.as_str(), batched).batch_size(100).linger(Duration::from_millis(5))
        }
    };
    let app =
        App::new().pubsub(broker.clone()).state(pool.clone()).state(inbox).state(done.clone()).route(route);
    let router = app.start().await.map_err(|e| e.into_std())?;
    let started = Instant::now();
    let mut left = messages;
    let mut n = 0u64;
    while left > 0 {
        let count = left.min(100);
        let batch = (0..count)
            .map(|_| {
                n += 1;
                Message::new(n.to_string())
            })
            .collect();
        broker.publish_batch(&topic, batch).await.map_err(|e| e.into_std())?;
        left -= count;
    }
    while done.0.load(Ordering::Relaxed) < messages {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let handled = rate(messages, started.elapsed());
    router.close().await.map_err(|e| e.into_std())?;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rows").fetch_one(&pool).await?;
    if rows != messages as i64 {
        return Err(format!("{rows} rows for {messages} messages").into());
    }
    Ok(handled)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse("--unused", "", &[]).map(|mut args| {
        if !std::env::args().any(|a| a == "--messages") {
            args.messages = 20_000;
        }
        args
    });
    side_by_side::main_with("inbox-bench", args, async |args| {
        let bench = Bench {
            name: "inbox-bench",
            raw: "a handler writing its row in its own transaction",
            setting: format!("{} messages, one row each, SQLite, from the in-memory broker", args.messages),
            scenarios: [
                "Tx<Sqlite> handler (inbox key + row, one transaction)",
                "batch handler (100 rows per transaction)",
            ],
        };
        let messages = args.messages;
        bench
            .run(
                args.runs,
                async || Ok([side(Side::Inbox, messages).await?, side(Side::Batch, messages).await?]),
                async || {
                    let raw = side(Side::Raw, messages).await?;
                    Ok([raw, raw])
                },
            )
            .await
    })
}
