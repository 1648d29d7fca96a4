//! `TestApp`: publish, wait until the handlers settle, inspect what happened.

use std::sync::atomic::{AtomicU32, Ordering};

use millstream::prelude::*;
use millstream::router::poison_keys;
use millstream::testing::{Outcome, TestApp, TestConfig};
use millstream::{App, ErrorKind};

/// A chain of three handlers: orders → invoices → receipts (with a side publish through `Ctx`).
mod chain {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::topic("testing.orders")]
    pub(crate) struct Order {
        pub(crate) id: u64,
        pub(crate) qty: u32,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::topic("testing.invoices")]
    pub(crate) struct Invoice {
        pub(crate) order: u64,
        pub(crate) cents: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::topic("testing.receipts")]
    pub(crate) struct Receipt {
        pub(crate) order: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::topic("testing.audit")]
    pub(crate) struct Audit {
        pub(crate) note: String,
    }

    #[derive(Clone)]
    pub(crate) struct Prices(pub(crate) u64);

    #[millstream::handler]
    pub(crate) async fn bill(order: Order, State(prices): State<Prices>) -> Vec<Invoice> {
        (0..order.qty).map(|_| Invoice { order: order.id, cents: prices.0 }).collect()
    }

    #[millstream::handler]
    pub(crate) async fn receipt(invoice: Invoice, ctx: Ctx) -> Result<Receipt> {
        ctx.publish(&Audit { note: format!("receipt for {}", invoice.order) }).await?;
        Ok(Receipt { order: invoice.order })
    }
}

#[tokio::test]
async fn settles_after_the_whole_chain_and_records_every_topic() {
    use chain::*;
    let app = TestApp::start(
        App::from_registry().module_prefix(module_path!().to_owned() + "::chain").state(Prices(99)),
    )
    .await
    .unwrap();
    app.publish(&Order { id: 1, qty: 2 }).await.unwrap();
    app.publish(&Order { id: 2, qty: 1 }).await.unwrap();
    app.settled().await;
    assert_eq!(app.published::<Order>().len(), 2);
    let mut invoices = app.published::<Invoice>();
    invoices.sort_by_key(|i| i.order);
    assert_eq!(
        invoices,
        [Invoice { order: 1, cents: 99 }, Invoice { order: 1, cents: 99 }, Invoice { order: 2, cents: 99 }]
    );
    assert_eq!(app.published::<Receipt>().len(), 3);
    assert_eq!(app.published::<Audit>().len(), 3);
    assert_eq!(app.acked("testing.orders").len(), 2);
    assert_eq!(app.acked("testing.invoices").len(), 3);
    assert!(app.nacked("testing.orders").is_empty());
    assert!(app.poisoned().is_empty());
    let groups: Vec<_> = app.settlements().into_iter().filter_map(|s| s.group).collect();
    assert!(
        groups.iter().all(|g| g == "testing::chain::bill" || g == "testing::chain::receipt"),
        "{groups:?}"
    );
    app.stop().await.unwrap();
}

/// A handler that fails twice, then succeeds; one that always fails; one whose payload is bad.
mod failing {
    use super::*;

    pub(crate) static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::topic("testing.jobs")]
    pub(crate) struct Job {
        pub(crate) id: u64,
    }

    #[millstream::handler]
    pub(crate) async fn flaky(job: Job, Attempt(attempt): Attempt) -> Result<()> {
        FLAKY_CALLS.fetch_add(1, Ordering::SeqCst);
        if attempt < 3 {
            return Err(Error::msg(format!("job {} not yet", job.id)));
        }
        Ok(())
    }

    #[millstream::handler(topic = "testing.doomed")]
    pub(crate) async fn doomed(_: Json<serde_json::Value>) -> Result<()> {
        Err(Error::msg("never works"))
    }

    #[millstream::handler(topic = "testing.strict")]
    pub(crate) async fn strict(_job: Job) {}
}

#[tokio::test]
async fn nacks_redeliveries_give_ups_and_poison_are_recorded() {
    use failing::*;
    let config = TestConfig::default().max_attempts(3);
    let app = TestApp::start_with(
        App::from_registry().module_prefix(module_path!().to_owned() + "::failing"),
        config,
    )
    .await
    .unwrap();

    // Fails on attempts 1 and 2, succeeds on 3.
    app.publish(&Job { id: 5 }).await.unwrap();
    app.settled().await;
    assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 3);
    assert_eq!(app.nacked("testing.jobs").len(), 2);
    assert_eq!(app.acked("testing.jobs").len(), 1);
    let attempts: Vec<_> = app
        .settlements()
        .into_iter()
        .filter(|s| s.topic == "testing.jobs")
        .map(|s| (s.attempt, s.outcome))
        .collect();
    assert_eq!(attempts, [(1, Outcome::Nacked), (2, Outcome::Nacked), (3, Outcome::Acked)]);

    // Always fails: the test app gives up after three attempts instead of hanging.
    app.publish_to("testing.doomed", &serde_json::json!({"x": 1})).await.unwrap();
    app.settled().await;
    assert_eq!(app.nacked("testing.doomed").len(), 2);
    assert_eq!(app.gave_up("testing.doomed").len(), 1);

    // A payload that does not decode goes to the poison topic at once, with the reason.
    app.publish_message("testing.strict", Message::new(r#"{"id":"seven"}"#)).await.unwrap();
    app.settled().await;
    let poisoned = app.poisoned();
    assert_eq!(poisoned.len(), 1);
    assert_eq!(&poisoned[0].payload()[..], br#"{"id":"seven"}"#);
    assert_eq!(poisoned[0].metadata().get(poison_keys::HANDLER), Some("testing::failing::strict"));
    assert_eq!(poisoned[0].metadata().get(poison_keys::KIND), Some("Decode"));
    assert_eq!(app.acked("testing.strict").len(), 1, "a poisoned message is acked");
    app.stop().await.unwrap();
}

/// Handlers bound to named pub/subs run in the test app too.
mod named {
    use super::*;

    #[millstream::handler(topic = "testing.named.in", publish = "testing.named.out", pubsub = "kafka")]
    pub(crate) async fn relay(value: serde_json::Value) -> Json<serde_json::Value> {
        Json(value)
    }
}

#[tokio::test]
async fn named_pubsubs_are_replaced_by_the_in_memory_backend() {
    let app = TestApp::start(App::from_registry().module_prefix(module_path!().to_owned() + "::named"))
        .await
        .unwrap();
    app.publish_to("testing.named.in", &serde_json::json!([1, 2])).await.unwrap();
    app.settled().await;
    let out = app.published_on("testing.named.out");
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].payload()[..], b"[1,2]");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn start_reports_build_problems() {
    let err = TestApp::start(App::from_registry().module_prefix(module_path!().to_owned() + "::chain"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string().contains("State<testing::chain::Prices> is used but was never provided"),
        "{err}"
    );
}

/// A handler that never finishes.
mod stuck {
    use super::*;

    #[millstream::handler(topic = "testing.stuck")]
    pub(crate) async fn stuck(_: Bytes) {
        std::future::pending::<()>().await;
    }
}

#[tokio::test]
#[should_panic(
    expected = "the test app did not settle within 200ms: 0 being published, 1 deliveries being handled"
)]
async fn settled_fails_the_test_when_work_never_ends() {
    let config = TestConfig::default().settle_timeout(std::time::Duration::from_millis(200));
    let app = TestApp::start_with(
        App::from_registry().module_prefix(module_path!().to_owned() + "::stuck"),
        config,
    )
    .await
    .unwrap();
    app.publish_message("testing.stuck", Message::new("x")).await.unwrap();
    app.settled().await;
}

/// A handler behind a `PoisonQueue` layer with a topic of its own.
mod layered {
    use super::*;
    use millstream::middleware::PoisonQueue;

    #[millstream::handler(topic = "testing.layered", middleware = [PoisonQueue::new("poison")])]
    pub(crate) async fn refuses(_: Json<serde_json::Value>) -> Result<()> {
        Err(Error::permanent("refused by policy"))
    }
}

#[tokio::test]
async fn poisoned_sees_what_a_poison_layer_sends_to_its_own_topic() {
    let app = TestApp::start(App::from_registry().module_prefix(module_path!().to_owned() + "::layered"))
        .await
        .unwrap();
    app.publish_to("testing.layered", &serde_json::json!({"id": 1})).await.unwrap();
    app.settled().await;
    let poisoned = app.poisoned();
    assert_eq!(poisoned.len(), 1, "{:?}", app.published_all());
    assert_eq!(poisoned[0].poison_reason(), Some("refused by policy"));
    assert_eq!(app.published_on("poison").len(), 1, "it went to the layer's topic");
    assert!(app.published_on("millstream.poison").is_empty());
    assert_eq!(app.acked("testing.layered").len(), 1);
    app.stop().await.unwrap();
}
