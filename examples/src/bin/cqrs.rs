//! `cqrs`: an order flow of commands and events on the embedded in-memory backend.
//!
//! ```text
//! PlaceOrder ─> place ─> OrderPlaced ─┬─> charge_on_placed ─> ChargeCard ─> charge ─┬─> PaymentTaken ─> ShipOrder ─> ship ─> OrderShipped
//!                                     └─> count_placed                             └─> PaymentFailed ─> CancelOrder ─> cancel ─> OrderCancelled
//! ```
//!
//! Commands (`#[millstream::command]`) have exactly one handler each; events
//! (`#[millstream::event]`) have any number, each in its own consumer group. The order's events
//! share one topic, `orders` (one stream per aggregate, in order): each event handler runs only
//! for its own type. A handler returns the events it causes, or sends commands through the
//! `CommandBus` it takes; the correlation id of the first command follows the whole flow. One
//! card in seven is declined: that order is cancelled (the compensation), every other is shipped.
//!
//! ```text
//! cargo run --release -p millstream-examples --bin cqrs -- [--orders N]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use millstream::middleware::CorrelationId;
use millstream::prelude::*;
use tokio::sync::Notify;

// Commands: each to its own topic, `commands.<Type>`.

#[derive(Debug, Serialize, Deserialize)]
#[millstream::command]
struct PlaceOrder {
    id: u64,
    cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::command]
struct ChargeCard {
    order: u64,
    cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::command]
struct ShipOrder {
    order: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::command]
struct CancelOrder {
    order: u64,
    reason: String,
}

// Events: the order's history, on one topic.

#[derive(Debug, Serialize, Deserialize)]
#[millstream::event(topic = "orders")]
struct OrderPlaced {
    id: u64,
    cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::event(topic = "orders")]
struct PaymentTaken {
    order: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::event(topic = "orders")]
struct PaymentFailed {
    order: u64,
    reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::event(topic = "orders")]
struct OrderShipped {
    order: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::event(topic = "orders")]
struct OrderCancelled {
    order: u64,
    reason: String,
}

/// How the flow went, shared by the handlers and `main`.
#[derive(Clone, Default)]
struct Stats(Arc<StatsInner>);

#[derive(Default)]
struct StatsInner {
    placed: AtomicU64,
    shipped: AtomicU64,
    cancelled: AtomicU64,
    uncorrelated: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Stats {
    fn finished(&self) {
        let inner = &self.0;
        let ended = inner.shipped.load(Ordering::Relaxed) + inner.cancelled.load(Ordering::Relaxed);
        if ended == inner.target.load(Ordering::Relaxed) {
            inner.done.notify_one();
        }
    }
}

#[millstream::command_handler]
async fn place(order: PlaceOrder) -> OrderPlaced {
    OrderPlaced { id: order.id, cents: order.cents }
}

#[millstream::event_handler]
async fn count_placed(_: OrderPlaced, State(stats): State<Stats>) {
    stats.0.placed.fetch_add(1, Ordering::Relaxed);
}

#[millstream::event_handler]
async fn charge_on_placed(order: OrderPlaced, commands: CommandBus) -> Result<()> {
    commands.send(&ChargeCard { order: order.id, cents: order.cents }).await
}

#[millstream::command_handler]
async fn charge(card: ChargeCard, events: EventBus) -> Result<()> {
    if card.order % 7 == 3 {
        let reason = format!("card declined for {} cents", card.cents);
        return events.publish(&PaymentFailed { order: card.order, reason }).await;
    }
    events.publish(&PaymentTaken { order: card.order }).await
}

#[millstream::event_handler]
async fn ship_when_paid(payment: PaymentTaken) -> ShipOrder {
    ShipOrder { order: payment.order }
}

/// The compensation: a failed payment cancels the order.
#[millstream::event_handler]
async fn cancel_when_payment_failed(failure: PaymentFailed) -> CancelOrder {
    CancelOrder { order: failure.order, reason: failure.reason }
}

#[millstream::command_handler]
async fn ship(command: ShipOrder) -> OrderShipped {
    OrderShipped { order: command.order }
}

#[millstream::command_handler]
async fn cancel(command: CancelOrder) -> OrderCancelled {
    OrderCancelled { order: command.order, reason: command.reason }
}

#[millstream::event_handler]
async fn on_shipped(_: OrderShipped, State(stats): State<Stats>, ctx: Ctx) {
    ended(&stats, &stats.0.shipped, &ctx);
}

#[millstream::event_handler]
async fn on_cancelled(_: OrderCancelled, State(stats): State<Stats>, ctx: Ctx) {
    ended(&stats, &stats.0.cancelled, &ctx);
}

fn ended(stats: &Stats, counter: &AtomicU64, ctx: &Ctx) {
    if !ctx.correlation_id().is_some_and(|id| id.starts_with("order-")) {
        stats.0.uncorrelated.fetch_add(1, Ordering::Relaxed);
    }
    counter.fetch_add(1, Ordering::Relaxed);
    stats.finished();
}

fn orders_from_args() -> Result<u64, String> {
    let mut orders = 1_000;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--orders" | "-n" => {
                let value = it.next().ok_or("--orders needs a number")?;
                orders = value.replace('_', "").parse().map_err(|e| format!("--orders {value}: {e}"))?;
            }
            "--help" | "-h" => {
                println!("usage: cqrs [--orders N (default 1000)]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`; try --help")),
        }
    }
    if orders == 0 {
        return Err("--orders must be at least 1".into());
    }
    Ok(orders)
}

#[tokio::main]
async fn main() -> Result<()> {
    let orders = match orders_from_args() {
        Ok(orders) => orders,
        Err(problem) => {
            eprintln!("cqrs: {problem}");
            std::process::exit(2);
        }
    };
    let pubsub = MemoryPubSub::new();
    let stats = Stats::default();
    stats.0.target.store(orders, Ordering::Relaxed);
    // Only this example's handlers (the binary links no others, but say so).
    let router = App::from_registry()
        .module_prefix("cqrs")
        .pubsub(pubsub.clone())
        .layer(CorrelationId)
        .state(stats.clone())
        .start()
        .await?;

    for id in 0..orders {
        let commands = CommandBus::new(pubsub.clone()).correlation_id(format!("order-{id}"));
        commands.send(&PlaceOrder { id, cents: 1_000 + id }).await?;
    }
    let finished = stats.0.done.notified();
    if tokio::time::timeout(Duration::from_secs(120), finished).await.is_err() {
        eprintln!("cqrs: the flow did not finish in 2 minutes");
        std::process::exit(1);
    }
    router.close().await?;

    let inner = &stats.0;
    let (placed, shipped, cancelled) = (
        inner.placed.load(Ordering::Relaxed),
        inner.shipped.load(Ordering::Relaxed),
        inner.cancelled.load(Ordering::Relaxed),
    );
    let declined = (0..orders).filter(|id| id % 7 == 3).count() as u64;
    println!("{orders} orders: {placed} placed, {shipped} shipped, {cancelled} cancelled (card declined)");
    let correct = placed == orders
        && cancelled == declined
        && shipped == orders - declined
        && inner.uncorrelated.load(Ordering::Relaxed) == 0;
    if !correct {
        eprintln!(
            "cqrs: expected {orders} placed, {} shipped, {declined} cancelled, every one correlated",
            orders - declined
        );
        std::process::exit(1);
    }
    Ok(())
}
