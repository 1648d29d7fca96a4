//! Commands and events: their identity in metadata, their handlers' type filter, the buses, and
//! the one-handler-per-command rule.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use millstream::keys::message::{KIND, TYPE, VERSION};
use millstream::prelude::*;
use millstream::testing::TestApp;
use millstream::{ErrorKind, MessageKind, SubscribeOptions};

/// An order flow: a command, its handler, the events it causes.
mod orders {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::command]
    pub(crate) struct PlaceOrder {
        pub(crate) id: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "cqrs-test.orders")]
    pub(crate) struct OrderPlaced {
        pub(crate) id: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "cqrs-test.orders", version = 2)]
    pub(crate) struct OrderPaid {
        pub(crate) id: u64,
        pub(crate) cents: u64,
    }

    pub(crate) static PLACED: AtomicU32 = AtomicU32::new(0);
    pub(crate) static PAID: AtomicU32 = AtomicU32::new(0);

    #[millstream::command_handler]
    pub(crate) async fn place(order: PlaceOrder) -> OrderPlaced {
        OrderPlaced { id: order.id }
    }

    #[millstream::event_handler]
    pub(crate) async fn on_placed(_: OrderPlaced) {
        PLACED.fetch_add(1, Ordering::SeqCst);
    }

    #[millstream::event_handler]
    pub(crate) async fn on_paid(event: OrderPaid) {
        PAID.fetch_add(u32::try_from(event.cents).unwrap_or(0), Ordering::SeqCst);
    }
}

#[test]
fn the_attributes_name_topics_and_types() {
    use orders::*;
    assert_eq!(<PlaceOrder as Topic>::NAME, "commands.PlaceOrder");
    assert_eq!(<OrderPlaced as Topic>::NAME, "cqrs-test.orders");
    let paid = <OrderPaid as Topic>::MESSAGE_TYPE.expect("an event has a type");
    assert_eq!(
        (paid.kind, paid.name, paid.version, paid.version_text),
        (MessageKind::Event, "OrderPaid", 2, "2")
    );
    let place = <PlaceOrder as Topic>::MESSAGE_TYPE.expect("a command has a type");
    assert_eq!((place.kind, place.name, place.version), (MessageKind::Command, "PlaceOrder", 1));
    let roles: Vec<_> = millstream::registry::handlers()
        .iter()
        .filter(|d| d.info().module_path.ends_with("cqrs::orders"))
        .map(|d| (d.info().fn_name, d.info().role, d.info().topic, d.info().effective_group()))
        .collect();
    use millstream::registry::Role;
    assert_eq!(
        roles,
        [
            ("on_paid", Role::EventHandler, "cqrs-test.orders", "handling::cqrs::orders::on_paid"),
            ("on_placed", Role::EventHandler, "cqrs-test.orders", "handling::cqrs::orders::on_placed"),
            ("place", Role::CommandHandler, "commands.PlaceOrder", "handling::cqrs::orders::place"),
        ]
    );
}

#[tokio::test]
async fn a_command_causes_events_that_carry_their_type_and_each_handler_runs_for_its_own() {
    use orders::*;
    let app = TestApp::start(App::from_registry().module_prefix(module_path!().to_owned() + "::orders"))
        .await
        .unwrap();
    app.publish(&PlaceOrder { id: 1 }).await.unwrap();
    app.publish(&OrderPaid { id: 1, cents: 250 }).await.unwrap();
    app.settled().await;

    let command = &app.published_on("commands.PlaceOrder")[0];
    assert_eq!(
        (command.metadata().get(KIND), command.metadata().get(TYPE), command.metadata().get(VERSION)),
        (Some("command"), Some("PlaceOrder"), Some("1"))
    );
    let events = app.published_on("cqrs-test.orders");
    let types: Vec<_> = events.iter().map(|m| (m.metadata().get(TYPE), m.metadata().get(VERSION))).collect();
    assert_eq!(types.len(), 2, "{types:?}");
    assert!(types.contains(&(Some("OrderPlaced"), Some("1"))), "{types:?}");
    assert!(types.contains(&(Some("OrderPaid"), Some("2"))), "{types:?}");
    assert_eq!(app.published::<OrderPlaced>(), [OrderPlaced { id: 1 }]);

    // Both event handlers read both events; each ran once, for its own type, and acked the other.
    assert_eq!(PLACED.load(Ordering::SeqCst), 1);
    assert_eq!(PAID.load(Ordering::SeqCst), 250);
    assert_eq!(app.acked("cqrs-test.orders").len(), 4);
    assert!(app.poisoned().is_empty(), "{:?}", app.poisoned());
    app.stop().await.unwrap();
}

/// Versions: the current one, an older one with an upcaster, an older one without, a newer one,
/// one that is not a number, none.
mod versions {
    use super::*;

    /// Version 1 priced in whole dollars.
    #[derive(Deserialize)]
    pub(crate) struct PricedV1 {
        pub(crate) dollars: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "cqrs-test.versions", version = 3, upcast(1 = PricedV1))]
    pub(crate) struct Priced {
        pub(crate) cents: u64,
    }

    impl From<PricedV1> for Priced {
        fn from(old: PricedV1) -> Self {
            Priced { cents: old.dollars * 100 }
        }
    }

    pub(crate) static CENTS: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

    #[millstream::event_handler]
    pub(crate) async fn priced(event: Priced, meta: Metadata) {
        assert_eq!(meta.get(VERSION).unwrap_or("3"), "3", "the handler sees the current version");
        CENTS.lock().unwrap().push(event.cents);
    }
}

#[tokio::test]
async fn older_versions_are_upcast_or_poisoned_and_newer_ones_poisoned_with_the_reason() {
    use versions::*;
    let app = TestApp::start(App::from_registry().module_prefix(module_path!().to_owned() + "::versions"))
        .await
        .unwrap();
    let typed = |version: &str, payload: &'static str| {
        Message::new(payload)
            .with_header(TYPE, "Priced")
            .with_header(VERSION, version)
            .with_header(KIND, "event")
    };
    app.publish_message("cqrs-test.versions", typed("1", r#"{"dollars":2}"#)).await.unwrap();
    app.publish_message("cqrs-test.versions", typed("2", r#"{"cents":3}"#)).await.unwrap();
    app.publish_message("cqrs-test.versions", typed("3", r#"{"cents":4}"#)).await.unwrap();
    app.publish_message("cqrs-test.versions", typed("4", r#"{"cents":5}"#)).await.unwrap();
    app.publish_message("cqrs-test.versions", typed("two", r#"{"cents":6}"#)).await.unwrap();
    // Another program's message says no type: its payload decides.
    app.publish_message("cqrs-test.versions", Message::new(r#"{"cents":7}"#)).await.unwrap();
    // An older version whose payload does not decode as the old type.
    app.publish_message("cqrs-test.versions", typed("1", r#"{"cents":8}"#)).await.unwrap();
    app.settled().await;
    let mut cents = CENTS.lock().unwrap().clone();
    cents.sort_unstable();
    assert_eq!(cents, [4, 7, 200], "version 1 upcast, version 3 and no version handled");
    let mut reasons: Vec<_> =
        app.poisoned().iter().map(|m| m.poison_reason().unwrap_or("").to_owned()).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    let expected = [
        "Priced has a version that is not a number: \"two\"",
        "Priced version 1 could not be upcast to version 3: missing field `dollars`",
        "Priced version 2 is older than this handler's (version 3) and Priced has no upcaster from it",
        "Priced version 4 is newer than this handler's (version 3)",
    ];
    for (reason, expected) in reasons.iter().zip(expected) {
        assert!(reason.contains(expected), "{reason:?} should say {expected:?}");
    }
    app.stop().await.unwrap();
}

/// Two handlers of one command, declared `external` (as two crates would be): the compiler
/// cannot see them, the app's build does.
mod twice {
    use super::*;

    #[derive(Serialize, Deserialize)]
    #[millstream::command(topic = "cqrs-test.twice")]
    pub(crate) struct Charge {
        pub(crate) cents: u64,
    }

    #[millstream::command_handler(external)]
    pub(crate) async fn charge(_: Charge) {}

    #[millstream::command_handler(external, name = "cqrs-test.charge-again")]
    pub(crate) async fn charge_again(_: Charge) {}
}

#[test]
fn two_handlers_of_one_command_fail_the_build_naming_both() {
    let error = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::twice")
        .pubsub(MemoryPubSub::new())
        .build()
        .expect_err("two handlers of one command");
    assert_eq!(error.kind(), ErrorKind::Config);
    let text = error.to_string();
    assert!(text.contains("command `Charge` has two handlers"), "{text}");
    assert!(text.contains("`handling::cqrs::twice::charge` (runtime/tests/handling/cqrs.rs:"), "{text}");
    assert!(text.contains("`cqrs-test.charge-again` (runtime/tests/handling/cqrs.rs:"), "{text}");
    assert!(text.contains("exactly one handler"), "{text}");
}

/// A command handler that publishes an event through the bus it takes.
mod buses {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[millstream::command(topic = "cqrs-test.ship")]
    pub(crate) struct Ship {
        pub(crate) id: u64,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[millstream::event(topic = "cqrs-test.shipped")]
    pub(crate) struct Shipped {
        pub(crate) id: u64,
    }

    #[millstream::command_handler]
    pub(crate) async fn ship(command: Ship, events: EventBus) -> Result<()> {
        events.publish(&Shipped { id: command.id }).await
    }
}

#[tokio::test]
async fn the_buses_send_typed_messages_and_carry_the_correlation_id() {
    use buses::*;
    let pubsub = MemoryPubSub::new();
    let mut shipped = pubsub.subscribe("cqrs-test.shipped", SubscribeOptions::default()).await.unwrap();
    let router = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::buses")
        .pubsub(pubsub.clone())
        .start()
        .await
        .unwrap();
    CommandBus::new(pubsub.clone()).correlation_id("flow-7").send(&Ship { id: 7 }).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(30), shipped.next())
        .await
        .expect("the event in time")
        .expect("a delivery")
        .expect("no error");
    let message = delivery.message();
    assert_eq!(serde_json::from_slice::<Shipped>(message.payload()).unwrap(), Shipped { id: 7 });
    assert_eq!(message.correlation_id(), Some("flow-7"));
    assert_eq!(
        (message.metadata().get(KIND), message.metadata().get(TYPE)),
        (Some("event"), Some("Shipped"))
    );
    delivery.ack().await.unwrap();
    router.close().await.unwrap();
}

/// Two event handlers of one topic in one group are an event group; a command handler in that
/// group would compete with it for the topic's messages.
mod shared_group {
    use super::*;

    #[derive(Serialize, Deserialize)]
    #[millstream::event(topic = "cqrs-test.shared")]
    pub(crate) struct Opened {
        pub(crate) id: u64,
    }

    #[derive(Serialize, Deserialize)]
    #[millstream::event(topic = "cqrs-test.shared")]
    pub(crate) struct Closed {
        pub(crate) id: u64,
    }

    #[millstream::event_handler(group = "projector")]
    pub(crate) async fn on_opened(_: Opened) {}

    #[millstream::event_handler(group = "projector")]
    pub(crate) async fn on_closed(_: Closed) {}

    #[derive(Serialize, Deserialize)]
    #[millstream::command(topic = "cqrs-test.shared")]
    pub(crate) struct Reopen {
        pub(crate) id: u64,
    }

    #[millstream::command_handler(group = "projector")]
    pub(crate) async fn reopen(_: Reopen) {}
}

#[test]
fn a_command_handler_in_an_event_group_fails_the_build() {
    let error = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::shared_group")
        .pubsub(MemoryPubSub::new())
        .build()
        .expect_err("a command handler in an event group");
    let text = error.to_string();
    assert!(
        text.contains("handler `handling::cqrs::shared_group::reopen`")
            && text.contains("reads topic `cqrs-test.shared` in group `projector`, which is an event group"),
        "{text}"
    );
}

#[test]
fn the_topology_draws_commands_events_and_their_handlers() {
    use millstream::registry::Role;
    let topology = App::from_registry().module_prefix(module_path!().to_owned() + "::orders").topology();
    let nodes: Vec<_> = topology
        .handlers()
        .iter()
        .map(|n| (n.name.as_str(), n.topic.as_str(), n.publishes.as_deref(), n.role))
        .collect();
    assert_eq!(
        nodes,
        [
            ("handling::cqrs::orders::on_paid", "cqrs-test.orders", None, Some(Role::EventHandler)),
            ("handling::cqrs::orders::on_placed", "cqrs-test.orders", None, Some(Role::EventHandler)),
            (
                "handling::cqrs::orders::place",
                "commands.PlaceOrder",
                Some("cqrs-test.orders"),
                Some(Role::CommandHandler)
            ),
        ]
    );
    let mermaid = topology.mermaid();
    assert!(
        mermaid.contains("    t0[(\"commands.PlaceOrder\")]\n    t1[(\"cqrs-test.orders\")]\n"),
        "{mermaid}"
    );
    assert!(mermaid.contains("    h2[\"handling::cqrs::orders::place<br/><small>command handler</small>\"]\n    t0 --> h2\n    h2 --> t1\n"), "{mermaid}");
}
