//! `ledger`: effectively-once processing with the transactional inbox, and a batch handler.
//!
//! ```text
//! payments (broker) ─┬─> book (Tx<Sqlite>: ledger row + balance + Receipt, one transaction)
//!                    │        └─> receipts, in the SQLite outbox
//!                    └─> tally (batch handler: up to 100 deliveries at once)
//! ```
//!
//! Payments arrive on a broker (the in-memory one here; any backend works) and every payment is
//! delivered twice, as a broker does after a lost ack. `book` writes its ledger row, moves the
//! balance and returns its receipt in one SQLite transaction with the message's inbox key, so the
//! second delivery finds the key and is acked without running the handler; the receipt is
//! written in the same transaction, to the SQLite pub/sub's `receipts` topic (the outbox).
//! `tally` counts every delivery, duplicates included, a batch at a time.
//!
//! ```text
//! cargo run -p millstream-examples --features sqlite --bin ledger -- [--payments N]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use millstream::prelude::*;
use millstream::pubsub::sql::sqlx::{self, Sqlite};
use millstream::{SqlConfig, SqlInbox, SqlPubSub, Tx};

#[derive(Debug, Serialize, Deserialize)]
#[millstream::topic("payments")]
struct Payment {
    account: u32,
    cents: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::topic("receipts")]
struct Receipt {
    account: u32,
    balance: i64,
}

static BATCHES: AtomicU64 = AtomicU64::new(0);
static TALLIED: AtomicU64 = AtomicU64::new(0);
static LARGEST: AtomicU64 = AtomicU64::new(0);

/// Books a payment: its row, the account's balance and the receipt commit together, once.
#[millstream::handler]
async fn book(payment: Payment, mut tx: Tx<Sqlite>) -> Result<Receipt> {
    sqlx::query("INSERT INTO ledger (account, cents) VALUES (?, ?)")
        .bind(payment.account)
        .bind(payment.cents)
        .execute(&mut *tx)
        .await
        .map_err(Error::backend)?;
    let balance: i64 = sqlx::query_scalar(
        "INSERT INTO balances (account, cents) VALUES (?, ?) \
         ON CONFLICT (account) DO UPDATE SET cents = cents + excluded.cents RETURNING cents",
    )
    .bind(payment.account)
    .bind(payment.cents)
    .fetch_one(&mut *tx)
    .await
    .map_err(Error::backend)?;
    Ok(Receipt { account: payment.account, balance })
}

/// Counts payment deliveries a batch at a time.
#[millstream::handler(batch = 100, linger = "20ms")]
async fn tally(payments: Vec<Payment>) {
    BATCHES.fetch_add(1, Ordering::SeqCst);
    TALLIED.fetch_add(payments.len() as u64, Ordering::SeqCst);
    LARGEST.fetch_max(payments.len() as u64, Ordering::SeqCst);
}

fn payments_arg() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--payments")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(500)
}

#[tokio::main]
async fn main() -> Result<()> {
    let payments = payments_arg();
    let dir = std::env::temp_dir().join(format!("millstream-ledger-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(Error::backend)?;
    let db = SqlPubSub::open_sqlite(dir.join("ledger.sqlite"), SqlConfig::default()).await?;
    let pool = db.sqlite_pool().expect("a SQLite pub/sub").clone();
    for statement in [
        "CREATE TABLE ledger (account INTEGER NOT NULL, cents INTEGER NOT NULL)",
        "CREATE TABLE balances (account INTEGER PRIMARY KEY, cents INTEGER NOT NULL)",
    ] {
        sqlx::query(statement).execute(&pool).await.map_err(Error::backend)?;
    }
    let broker = MemoryPubSub::new();
    let router = App::from_registry().pubsub(broker).state(SqlInbox::new(&db)).start().await?;

    let started = Instant::now();
    let mut expected = 0;
    for n in 0..payments {
        let payment = Payment { account: (n % 10) as u32, cents: n as i64 + 1 };
        expected += payment.cents;
        let message = Message::new(serde_json::to_vec(&payment).map_err(Error::backend)?);
        // The same message twice: a redelivery, as after an ack lost in a crash.
        router.publisher().publish("payments", message.clone()).await?;
        router.publisher().publish("payments", message).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let receipts = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM millstream_messages WHERE topic = 'receipts'")
            .fetch_one(&pool)
            .await
            .map_err(Error::backend)
    };
    while TALLIED.load(Ordering::SeqCst) < 2 * payments || receipts().await? < payments as i64 {
        if Instant::now() > deadline {
            return Err(Error::msg("the payments were not all booked and tallied within a minute"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    router.close().await?;
    let receipts = receipts().await?;

    let (rows, total): (i64, i64) = sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(cents), 0) FROM ledger")
        .fetch_one(&pool)
        .await
        .map_err(Error::backend)?;
    let balances: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(cents), 0) FROM balances")
        .fetch_one(&pool)
        .await
        .map_err(Error::backend)?;
    println!(
        "{payments} payments delivered twice each in {:.1?}: {rows} ledger rows, {total} cents booked \
         (expected {expected}), balances {balances}, {receipts} receipts in the outbox; \
         {} deliveries tallied in {} batches (largest {})",
        started.elapsed(),
        TALLIED.load(Ordering::SeqCst),
        BATCHES.load(Ordering::SeqCst),
        LARGEST.load(Ordering::SeqCst),
    );
    let _ = std::fs::remove_dir_all(&dir);
    if rows != payments as i64 || total != expected || balances != expected || receipts != payments as i64 {
        return Err(Error::msg("a payment was booked twice or not at all"));
    }
    Ok(())
}
