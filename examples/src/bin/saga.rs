//! `saga`: a checkout saga on SQLite (embedded, durable): order → payment → shipping, with a
//! failed or unanswered payment compensated.
//!
//! ```text
//! PlaceOrder ─> place ─> OrderPlaced ─> [Checkout] ─> ChargeCard ─> charge ─┬─> PaymentTaken ─> [Checkout] ─> ShipOrder ─> ship ─> OrderShipped ─> [Checkout] completes
//!                        (stock held)     │ keeps ReleaseStock               ├─> PaymentDeclined ─> [Checkout] fails ─> ReleaseStock ─> release
//!                                         └─ PaymentOverdue in 2 s ──────────┴─> (no answer) ─> PaymentOverdue ─> [Checkout] fails ─> ReleaseStock
//! ```
//!
//! The `Checkout` saga keeps one state per order (per correlation id) in the SQLite database.
//! Each of its steps commits the new state, the id of the message it took, and the commands it
//! sends in one transaction: a crash between the two cannot lose a command or send one twice.
//! Its compensation (`ReleaseStock`) is kept from the first step and sent only if the checkout
//! fails; its timeout (`PaymentOverdue`) is kept in the database and published by a relay.
//! One card in five is declined and one payment in seven never answered; every other order ships.
//!
//! ```text
//! cargo run --release -p millstream-examples --features sqlite --bin saga -- [--orders N]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use millstream::middleware::CorrelationId;
use millstream::prelude::*;
use millstream::saga::SagaOutcome;
use millstream::{CommandBus, EventBus, Saga, Sagas, SqlConfig, SqlPubSub, SqlSagaStore};

// Commands.

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
struct ReleaseStock {
    order: u64,
}

// Events.

#[derive(Debug, Serialize, Deserialize)]
#[millstream::event]
struct OrderPlaced {
    order: u64,
    cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::event(topic = "payments")]
struct PaymentTaken {
    order: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::event(topic = "payments")]
struct PaymentDeclined {
    order: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::event]
struct PaymentOverdue {
    order: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::event]
struct OrderShipped {
    order: u64,
}

// The saga.

/// One checkout's state, kept per correlation id.
#[derive(Debug, Default, Serialize, Deserialize)]
#[millstream::saga]
struct Checkout {
    order: u64,
    paid: bool,
}

/// How long a payment is waited for.
const PATIENCE: Duration = Duration::from_secs(2);

#[millstream::saga_handler(start)]
async fn placed(saga: &mut Saga<Checkout>, event: OrderPlaced) -> millstream::Result<()> {
    saga.order = event.order;
    saga.send(&ChargeCard { order: event.order, cents: event.cents })?;
    saga.compensate(&ReleaseStock { order: event.order })?;
    saga.timeout_after(PATIENCE, &PaymentOverdue { order: event.order })
}

#[millstream::saga_handler]
async fn paid(saga: &mut Saga<Checkout>, _: PaymentTaken) -> millstream::Result<()> {
    saga.paid = true;
    let order = saga.order;
    saga.send(&ShipOrder { order })
}

#[millstream::saga_handler]
async fn declined(saga: &mut Saga<Checkout>, _: PaymentDeclined) {
    saga.fail("card declined");
}

#[millstream::saga_handler]
async fn overdue(saga: &mut Saga<Checkout>, _: PaymentOverdue) {
    if !saga.paid {
        saga.fail("payment overdue");
    }
}

#[millstream::saga_handler]
async fn shipped(saga: &mut Saga<Checkout>, _: OrderShipped) {
    saga.complete();
}

// The services.

static HELD: AtomicU64 = AtomicU64::new(0);
static SHIPPED: AtomicU64 = AtomicU64::new(0);
static RELEASED: AtomicU64 = AtomicU64::new(0);

#[millstream::command_handler]
async fn place(command: PlaceOrder) -> OrderPlaced {
    HELD.fetch_add(1, Ordering::SeqCst);
    OrderPlaced { order: command.id, cents: command.cents }
}

#[millstream::command_handler(concurrency = 4)]
async fn charge(command: ChargeCard, events: EventBus) -> millstream::Result<()> {
    match command.order {
        order if order % 5 == 0 => events.publish(&PaymentDeclined { order }).await,
        order if order % 7 == 0 => Ok(()), // the payment provider never answers
        order => events.publish(&PaymentTaken { order }).await,
    }
}

#[millstream::command_handler]
async fn ship(command: ShipOrder) -> OrderShipped {
    SHIPPED.fetch_add(1, Ordering::SeqCst);
    OrderShipped { order: command.order }
}

#[millstream::command_handler]
async fn release(_: ReleaseStock) {
    HELD.fetch_sub(1, Ordering::SeqCst);
    RELEASED.fetch_add(1, Ordering::SeqCst);
}

fn orders_arg() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--orders")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
}

#[tokio::main]
async fn main() -> millstream::Result<()> {
    let orders = orders_arg();
    let dir = std::env::temp_dir().join(format!("millstream-saga-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(millstream::Error::backend)?;
    let pubsub = SqlPubSub::open_sqlite(dir.join("shop.sqlite"), SqlConfig::default()).await?;
    let store = SqlSagaStore::new(&pubsub).keep_finished_state(true);
    let router = App::from_registry()
        .pubsub(pubsub.clone())
        .layer(CorrelationId)
        .state(Sagas::new(store.clone()))
        .start()
        .await?;

    let started = Instant::now();
    for id in 1..=orders {
        // The order id is the checkout's correlation id: the saga instance's name.
        let commands = CommandBus::new(pubsub.clone()).correlation_id(format!("order-{id}"));
        commands.send(&PlaceOrder { id, cents: 1_000 + id }).await?;
    }
    let (declined, silent) = (
        (1..=orders).filter(|o| o % 5 == 0).count() as u64,
        (1..=orders).filter(|o| o % 5 != 0 && o % 7 == 0).count() as u64,
    );
    let expected_shipped = orders - declined - silent;
    let deadline = Instant::now() + Duration::from_secs(120);
    while SHIPPED.load(Ordering::SeqCst) < expected_shipped
        || RELEASED.load(Ordering::SeqCst) < declined + silent
    {
        if Instant::now() > deadline {
            return Err(millstream::Error::msg("the checkouts did not finish within two minutes"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (mut completed, mut failed) = (0, 0);
    for id in 1..=orders {
        match store.finished("Checkout", &format!("order-{id}")).await? {
            Some((SagaOutcome::Completed, _)) => completed += 1,
            Some((SagaOutcome::Failed(_), _)) => failed += 1,
            None => return Err(millstream::Error::msg(format!("checkout of order {id} did not finish"))),
        }
    }
    println!(
        "{orders} checkouts in {:.1?}: {completed} completed (shipped {}), {failed} failed and compensated \
         ({declined} declined, {silent} unanswered; stock released {}), stock still held {}",
        started.elapsed(),
        SHIPPED.load(Ordering::SeqCst),
        RELEASED.load(Ordering::SeqCst),
        HELD.load(Ordering::SeqCst) - SHIPPED.load(Ordering::SeqCst),
    );
    router.close().await?;
    let _ = std::fs::remove_dir_all(&dir);
    if completed != expected_shipped
        || failed != declined + silent
        || RELEASED.load(Ordering::SeqCst) != failed
    {
        return Err(millstream::Error::msg("the checkouts did not end as expected"));
    }
    Ok(())
}
