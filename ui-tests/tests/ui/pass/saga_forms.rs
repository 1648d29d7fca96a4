//! Sagas: state types and steps in every form the attributes accept, run on the in-memory store.
use std::time::Duration;

use millstream::prelude::*;
use millstream::testing::TestApp;
use millstream::{Saga, Sagas};

#[derive(Serialize, Deserialize)]
#[millstream::event]
struct OrderPlaced {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::event(topic = "payments")]
struct PaymentAccepted {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::topic("shipping.done")]
struct Shipped {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::command]
struct ChargeCard {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::command]
struct CancelOrder {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::event]
struct Overdue {
    id: u64,
}

/// A struct state, with its name set.
#[derive(Default, Serialize, Deserialize, Debug)]
#[millstream::saga(name = "checkout", crate = ::millstream)]
struct Checkout {
    id: u64,
    paid: bool,
}

/// An enum state, named by its type.
#[derive(Default, Serialize, Deserialize)]
#[millstream::saga]
enum Stage {
    #[default]
    Open,
    Closed,
}

#[millstream::saga_handler(start)]
async fn placed(saga: &mut Saga<Checkout>, event: OrderPlaced) -> Result<()> {
    saga.id = event.id;
    saga.send(&ChargeCard { id: event.id })?;
    saga.compensate(&CancelOrder { id: event.id })?;
    saga.timeout_after(Duration::from_secs(60), &Overdue { id: event.id })?;
    Ok(())
}

#[millstream::saga_handler(name = "checkout.accepted", concurrency = 2, group = "checkout")]
async fn accepted(saga: &mut Saga<Checkout>, event: PaymentAccepted, meta: Metadata, State(limit): State<u64>) {
    let _ = (meta, limit, event.id, saga.is_new(), saga.id());
    saga.state_mut().paid = true;
    saga.publish(&Overdue { id: saga.id }).expect("encodes");
}

#[millstream::saga_handler]
async fn shipped(saga: &mut Saga<Checkout>, event: Shipped) -> std::result::Result<(), std::io::Error> {
    let _ = event.id;
    saga.complete();
    Ok(())
}

#[millstream::saga_handler]
async fn overdue(saga: &mut millstream::Saga<Checkout>, #[payload] event: Overdue, ctx: Ctx) {
    let _ = (event.id, ctx.attempt());
    saga.fail("overdue");
}

#[millstream::saga_handler(start, id = id)]
async fn stage(saga: &mut Saga<Stage>, _event: OrderPlaced) {
    *saga.state_mut() = Stage::Closed;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let app = App::from_registry().state(Sagas::memory()).state(3_u64);
    let app = TestApp::start(app).await.expect("starts");
    app.publish(&OrderPlaced { id: 1 }).await.expect("publishes");
    app.settled().await;
    assert_eq!(app.published::<ChargeCard>().len(), 1);
    app.stop().await.expect("stops");
}
