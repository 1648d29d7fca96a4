//! `delays`: delayed delivery and requeued retries on SQLite (embedded, durable).
//!
//! ```text
//! PlaceOrder ─> place ─┬─> ChargeCard ─> charge ── busy? requeued for 1 s (attempt 2 succeeds)
//!                      └─> Delayed<PaymentReminder> (in 1 s) ─> remind
//! ```
//!
//! Every order gets a reminder one second later (a handler returning `Delayed<T>`); one charge in
//! three finds the gateway busy and asks to be retried in a second, which the router requeues
//! through the delay store instead of holding the topic's group. Then the app is stopped while
//! reminders are still waiting, a new app starts on the same database (a restart), and it
//! delivers them: the delay store is a table of the SQLite database.
//!
//! ```text
//! cargo run -p millstream-examples --features sqlite --bin delays -- [--orders N]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use millstream::prelude::*;
use millstream::router::RouterConfig;
use millstream::{Attempt, CommandBus, Delayed, SqlConfig, SqlDelayStore, SqlPubSub};

#[derive(Debug, Serialize, Deserialize)]
#[millstream::command]
struct PlaceOrder {
    id: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::command]
struct ChargeCard {
    order: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::event]
struct PaymentReminder {
    order: u64,
    /// When the order was placed, in Unix milliseconds.
    placed_ms: u64,
}

static REMINDED: AtomicU64 = AtomicU64::new(0);
static EARLY: AtomicU64 = AtomicU64::new(0);
static CHARGED: AtomicU64 = AtomicU64::new(0);
static REQUEUED: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[millstream::command_handler]
async fn place(order: PlaceOrder, bus: CommandBus) -> Result<Delayed<PaymentReminder>> {
    bus.send(&ChargeCard { order: order.id }).await?;
    Ok(Delayed::after(Duration::from_secs(1), PaymentReminder { order: order.id, placed_ms: now_ms() }))
}

#[millstream::command_handler]
async fn charge(command: ChargeCard, Attempt(attempt): Attempt) -> Result<()> {
    if command.order.is_multiple_of(3) && attempt == 1 {
        REQUEUED.fetch_add(1, Ordering::SeqCst);
        return Err(Error::msg("payment gateway busy").retry_after(Duration::from_secs(1)));
    }
    CHARGED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[millstream::event_handler]
async fn remind(reminder: PaymentReminder) {
    if now_ms() < reminder.placed_ms + 1_000 {
        EARLY.fetch_add(1, Ordering::SeqCst);
    }
    REMINDED.fetch_add(1, Ordering::SeqCst);
}

fn orders_arg() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--orders")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(30)
}

async fn app(path: &std::path::Path) -> Result<millstream::Router> {
    let pubsub = SqlPubSub::open_sqlite(path, SqlConfig::default()).await?;
    App::from_registry()
        .pubsub(pubsub.clone())
        .delays(SqlDelayStore::new(&pubsub))
        .config(RouterConfig::default().requeue_after(Some(Duration::from_millis(500))))
        .start()
        .await
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        if Instant::now() > deadline {
            return Err(Error::msg(format!("{what} did not happen within a minute")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let orders = orders_arg();
    let dir = std::env::temp_dir().join(format!("millstream-delays-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(Error::backend)?;
    let path = dir.join("shop.sqlite");

    // First run: every order placed, charged (some after a requeue) and reminded.
    let started = Instant::now();
    let router = app(&path).await?;
    for id in 1..=orders {
        router.publisher().publish_value(&PlaceOrder { id }).await?;
    }
    wait_until("all reminders", || REMINDED.load(Ordering::SeqCst) == orders).await?;
    wait_until("all charges", || CHARGED.load(Ordering::SeqCst) == orders).await?;
    println!(
        "{orders} orders in {:.1?}: {} charged ({} after a requeue), {} reminded a second later",
        started.elapsed(),
        CHARGED.load(Ordering::SeqCst),
        REQUEUED.load(Ordering::SeqCst),
        REMINDED.load(Ordering::SeqCst),
    );

    // Second run: orders placed, the app stopped before their reminders are due, a new app on
    // the same database delivers them.
    for id in orders + 1..=2 * orders {
        router.publisher().publish_value(&PlaceOrder { id }).await?;
    }
    // (Orders not yet placed stay in their topic and are placed by the next app.)
    router.close().await?;
    let before_restart = REMINDED.load(Ordering::SeqCst);
    let router = app(&path).await?;
    wait_until("the reminders left by the first app", || REMINDED.load(Ordering::SeqCst) == 2 * orders)
        .await?;
    wait_until("the charges", || CHARGED.load(Ordering::SeqCst) == 2 * orders).await?;
    println!(
        "after a restart: {} reminders the stopped app left were delivered by the new one; {} early",
        2 * orders - before_restart,
        EARLY.load(Ordering::SeqCst)
    );
    router.close().await?;
    let _ = std::fs::remove_dir_all(&dir);
    if EARLY.load(Ordering::SeqCst) > 0 {
        return Err(Error::msg("a reminder came before it was due"));
    }
    Ok(())
}
