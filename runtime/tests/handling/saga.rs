//! Sagas in memory: a checkout driven by its events, that sends commands, compensates a failed
//! payment, times out, finishes, and takes each message once.

use std::sync::Mutex;
use std::time::Duration;

use millstream::keys::CORRELATION_ID;
use millstream::middleware::CorrelationId;
use millstream::prelude::*;
use millstream::saga::SagaOutcome;
use millstream::testing::TestApp;
use millstream::{EventBus, Saga, Sagas};

/// The order flow: place → charge → ship, with a cancel to undo the order.
pub(crate) mod checkout {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "saga-test.orders")]
    pub(crate) struct OrderPlaced {
        pub(crate) order: u64,
        pub(crate) cents: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::command(topic = "saga-test.charge")]
    pub(crate) struct ChargeCard {
        pub(crate) order: u64,
        pub(crate) cents: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "saga-test.payments")]
    pub(crate) struct PaymentAccepted {
        pub(crate) order: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "saga-test.payments")]
    pub(crate) struct PaymentDeclined {
        pub(crate) order: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::command(topic = "saga-test.ship")]
    pub(crate) struct ShipOrder {
        pub(crate) order: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "saga-test.shipping")]
    pub(crate) struct OrderShipped {
        pub(crate) order: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::command(topic = "saga-test.cancel")]
    pub(crate) struct CancelOrder {
        pub(crate) order: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "saga-test.timeouts")]
    pub(crate) struct PaymentOverdue {
        pub(crate) order: u64,
    }

    /// Orders over this many cents are declined; orders of exactly `SILENT` cents get no answer.
    pub(crate) const LIMIT: u64 = 10_000;
    pub(crate) const SILENT: u64 = 777;

    #[derive(Default, Serialize, Deserialize, Debug)]
    #[millstream::saga(name = "saga-test.checkout")]
    pub(crate) struct Checkout {
        pub(crate) order: u64,
        pub(crate) paid: bool,
        pub(crate) steps: u32,
    }

    /// Each step the saga ran, as (order, step).
    pub(crate) static STEPS: Mutex<Vec<(u64, &'static str)>> = Mutex::new(Vec::new());

    fn step(order: u64, name: &'static str) {
        STEPS.lock().unwrap().push((order, name));
    }

    #[millstream::saga_handler(start)]
    pub(crate) async fn placed(saga: &mut Saga<Checkout>, event: OrderPlaced) -> millstream::Result<()> {
        step(event.order, "placed");
        saga.order = event.order;
        saga.steps += 1;
        saga.send(&ChargeCard { order: event.order, cents: event.cents })?;
        saga.compensate(&CancelOrder { order: event.order })?;
        saga.timeout_after(Duration::from_millis(300), &PaymentOverdue { order: event.order })?;
        Ok(())
    }

    #[millstream::saga_handler]
    pub(crate) async fn accepted(
        saga: &mut Saga<Checkout>,
        event: PaymentAccepted,
    ) -> millstream::Result<()> {
        step(event.order, "accepted");
        saga.paid = true;
        saga.steps += 1;
        saga.send(&ShipOrder { order: saga.order })
    }

    #[millstream::saga_handler]
    pub(crate) async fn declined(saga: &mut Saga<Checkout>, event: PaymentDeclined) {
        step(event.order, "declined");
        saga.fail("payment declined");
    }

    #[millstream::saga_handler]
    pub(crate) async fn shipped(saga: &mut Saga<Checkout>, event: OrderShipped) {
        step(event.order, "shipped");
        saga.complete();
    }

    #[millstream::saga_handler]
    pub(crate) async fn overdue(saga: &mut Saga<Checkout>, event: PaymentOverdue) {
        step(event.order, "overdue");
        if !saga.paid {
            saga.fail("payment overdue");
        }
    }

    // The services the saga drives.

    #[millstream::command_handler]
    pub(crate) async fn charge(command: ChargeCard, events: EventBus) -> millstream::Result<()> {
        match command.cents {
            SILENT => Ok(()),
            cents if cents > LIMIT => events.publish(&PaymentDeclined { order: command.order }).await,
            _ => events.publish(&PaymentAccepted { order: command.order }).await,
        }
    }

    #[millstream::command_handler]
    pub(crate) async fn ship(command: ShipOrder) -> OrderShipped {
        OrderShipped { order: command.order }
    }

    pub(crate) static CANCELLED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

    #[millstream::command_handler]
    pub(crate) async fn cancel(command: CancelOrder) {
        CANCELLED.lock().unwrap().push(command.order);
    }
}

use checkout::*;

/// One app for the whole flow, with the correlation id carried through the services.
async fn start() -> (TestApp, Sagas) {
    let sagas = Sagas::memory();
    let app = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::checkout")
        .layer(CorrelationId)
        .state(sagas.clone());
    (TestApp::start(app).await.unwrap(), sagas)
}

fn steps_of(order: u64) -> Vec<&'static str> {
    STEPS.lock().unwrap().iter().filter(|(o, _)| *o == order).map(|(_, s)| *s).collect()
}

async fn outcome(sagas: &Sagas, id: &str) -> Option<SagaOutcome> {
    sagas.memory_store().expect("a memory store").finished("saga-test.checkout", id).await
}

/// Waits (up to 10 s) for `condition`.
async fn eventually(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "not reached within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn placed_message(order: u64, cents: u64, correlation: &str) -> Message {
    let payload = serde_json::to_vec(&OrderPlaced { order, cents }).unwrap();
    Message::new(payload)
        .with_header(CORRELATION_ID, correlation.to_owned())
        .with_header(millstream::keys::message::TYPE, "OrderPlaced")
}

#[tokio::test]
async fn a_paid_order_is_charged_shipped_and_completed_with_the_correlation_id_carried() {
    let (app, sagas) = start().await;
    app.publish_message("saga-test.orders", placed_message(1, 500, "checkout-1")).await.unwrap();
    app.settled().await;

    assert_eq!(steps_of(1), ["placed", "accepted", "shipped"]);
    assert_eq!(outcome(&sagas, "checkout-1").await, Some(SagaOutcome::Completed));
    let charge = &app.published_on("saga-test.charge")[0];
    assert_eq!(charge.metadata().get(CORRELATION_ID), Some("checkout-1"));
    assert_eq!(charge.metadata().get(millstream::keys::message::TYPE), Some("ChargeCard"));
    assert_eq!(app.published::<ShipOrder>(), [ShipOrder { order: 1 }]);
    assert!(!CANCELLED.lock().unwrap().contains(&1), "a completed saga sends no compensation");

    // Its timeout was dropped with it: nothing overdue arrives, nothing runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.settled().await;
    assert!(app.published_on("saga-test.timeouts").is_empty());
    assert_eq!(steps_of(1), ["placed", "accepted", "shipped"]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_declined_payment_fails_the_saga_and_sends_its_compensation() {
    let (app, sagas) = start().await;
    app.publish_message("saga-test.orders", placed_message(2, LIMIT + 1, "checkout-2")).await.unwrap();
    app.settled().await;

    assert_eq!(steps_of(2), ["placed", "declined"]);
    assert_eq!(outcome(&sagas, "checkout-2").await, Some(SagaOutcome::Failed("payment declined".into())));
    assert_eq!(CANCELLED.lock().unwrap().iter().filter(|o| **o == 2).count(), 1);
    let cancel = &app.published_on("saga-test.cancel")[0];
    assert_eq!(cancel.metadata().get(CORRELATION_ID), Some("checkout-2"));
    assert!(app.published_on("saga-test.ship").is_empty());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_unanswered_payment_times_out_and_is_compensated() {
    let (app, sagas) = start().await;
    app.publish_message("saga-test.orders", placed_message(3, SILENT, "checkout-3")).await.unwrap();
    eventually(|| steps_of(3).contains(&"overdue")).await;
    app.settled().await;

    assert_eq!(steps_of(3), ["placed", "overdue"]);
    assert_eq!(outcome(&sagas, "checkout-3").await, Some(SagaOutcome::Failed("payment overdue".into())));
    assert_eq!(CANCELLED.lock().unwrap().iter().filter(|o| **o == 3).count(), 1);
    let overdue = &app.published_on("saga-test.timeouts")[0];
    assert_eq!(overdue.metadata().get(CORRELATION_ID), Some("checkout-3"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_redelivered_or_late_message_is_acked_without_running_the_step() {
    let (app, sagas) = start().await;
    let placed = placed_message(4, SILENT, "checkout-4");
    app.publish_message("saga-test.orders", placed.clone()).await.unwrap();
    app.settled().await;
    // The same message again (a redelivery): the instance took it already.
    app.publish_message("saga-test.orders", placed.clone()).await.unwrap();
    app.settled().await;
    assert_eq!(steps_of(4), ["placed"]);
    assert_eq!(app.published_on("saga-test.charge").len(), 1, "charged once");

    // A step for an instance that does not exist, and one that does not start instances.
    let stray = Message::new(serde_json::to_vec(&PaymentAccepted { order: 40 }).unwrap())
        .with_header(CORRELATION_ID, "no-such-checkout")
        .with_header(millstream::keys::message::TYPE, "PaymentAccepted");
    app.publish_message("saga-test.payments", stray).await.unwrap();
    app.settled().await;
    assert!(steps_of(40).is_empty());

    // After the instance finished, even its start message is acked unhandled.
    eventually(|| steps_of(4).contains(&"overdue")).await;
    app.settled().await;
    assert!(outcome(&sagas, "checkout-4").await.is_some());
    let again = Message::new(placed.payload().clone())
        .with_header(CORRELATION_ID, "checkout-4")
        .with_header(millstream::keys::message::TYPE, "OrderPlaced");
    app.publish_message("saga-test.orders", again).await.unwrap();
    app.settled().await;
    assert_eq!(steps_of(4), ["placed", "overdue"]);
    assert!(app.poisoned().is_empty(), "{:?}", app.poisoned());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_start_message_without_a_correlation_id_names_the_instance_by_its_own_id() {
    let (app, sagas) = start().await;
    let message = Message::new(serde_json::to_vec(&OrderPlaced { order: 5, cents: 100 }).unwrap())
        .with_header(millstream::keys::message::TYPE, "OrderPlaced");
    let id = message.id().to_string();
    app.publish_message("saga-test.orders", message).await.unwrap();
    app.settled().await;
    assert_eq!(steps_of(5), ["placed", "accepted", "shipped"]);
    assert_eq!(outcome(&sagas, &id).await, Some(SagaOutcome::Completed));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_app_without_a_saga_store_does_not_build() {
    let app = App::from_registry().module_prefix(module_path!().to_owned() + "::checkout");
    let Err(error) = TestApp::start(app).await else { panic!("built without a saga store") };
    let text = error.to_string();
    assert!(text.contains("saga::checkout::Checkout` has no store"), "{text}");
    assert!(text.contains("Sagas::memory()"), "{text}");
}

/// Instances named by a field of the message (`id = order`), not by the correlation id: one
/// batch (one correlation id) of several orders makes one instance per order.
pub(crate) mod by_field {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "saga-test.packed")]
    pub(crate) struct Packed {
        pub(crate) order: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "saga-test.delivered")]
    pub(crate) struct Delivered {
        pub(crate) order: u64,
    }

    #[derive(Default, Serialize, Deserialize, Debug)]
    #[millstream::saga(name = "saga-test.shipment")]
    pub(crate) struct Shipment {
        pub(crate) order: u64,
    }

    #[millstream::saga_handler(start, id = order)]
    pub(crate) async fn packed(saga: &mut Saga<Shipment>, event: Packed) {
        saga.order = event.order;
    }

    #[millstream::saga_handler(id = order)]
    pub(crate) async fn delivered(saga: &mut Saga<Shipment>, event: Delivered) {
        assert_eq!(saga.order, event.order, "the instance of this order");
        saga.complete();
    }
}

#[tokio::test]
async fn a_field_of_the_message_names_the_instance() {
    use by_field::*;
    let sagas = Sagas::memory();
    let app =
        App::from_registry().module_prefix(module_path!().to_owned() + "::by_field").state(sagas.clone());
    let app = TestApp::start(app).await.unwrap();
    let typed = |topic_type: &str, payload: Vec<u8>| {
        Message::new(payload)
            .with_header(CORRELATION_ID, "one-batch")
            .with_header(millstream::keys::message::TYPE, topic_type.to_owned())
    };
    for order in [7, 8, 9] {
        let payload = serde_json::to_vec(&Packed { order }).unwrap();
        app.publish_message("saga-test.packed", typed("Packed", payload)).await.unwrap();
    }
    app.settled().await;
    let store = sagas.memory_store().unwrap();
    for order in [7, 8, 9] {
        let state =
            store.running("saga-test.shipment", &order.to_string()).await.expect("one instance per order");
        assert!(state.contains(&format!("\"order\":{order}")), "{state}");
    }
    for order in [8, 7] {
        let payload = serde_json::to_vec(&Delivered { order }).unwrap();
        app.publish_message("saga-test.delivered", typed("Delivered", payload)).await.unwrap();
    }
    app.settled().await;
    assert_eq!(store.finished("saga-test.shipment", "7").await, Some(SagaOutcome::Completed));
    assert_eq!(store.finished("saga-test.shipment", "8").await, Some(SagaOutcome::Completed));
    assert!(store.running("saga-test.shipment", "9").await.is_some());
    assert!(app.poisoned().is_empty(), "{:?}", app.poisoned());
    app.stop().await.unwrap();
}
