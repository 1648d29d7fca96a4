//! Event groups: event handlers reading one topic in one explicit group read it as one
//! subscription, each message going to the handler of its type, in order; a type none of them
//! takes is poisoned with the reason, or ignored when the app says so.

use std::sync::Mutex;

use millstream::prelude::*;
use millstream::testing::TestApp;
use millstream::UnknownEvents;

/// The order events, one stream.
pub(crate) mod events {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "egroup.orders")]
    pub(crate) struct Placed {
        pub(crate) id: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "egroup.orders")]
    pub(crate) struct Paid {
        pub(crate) id: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "egroup.orders", name = "OrderShipped")]
    pub(crate) struct Shipped {
        pub(crate) id: u64,
    }

    /// No handler of the projection takes it.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::event(topic = "egroup.orders")]
    pub(crate) struct Refunded {
        pub(crate) id: u64,
    }
}

use events::*;

/// A projection that must see an order's events in order.
pub(crate) mod projection {
    use super::*;

    pub(crate) static SEEN: Mutex<Vec<(&'static str, u64)>> = Mutex::new(Vec::new());

    #[millstream::event_handler(group = "egroup.projection")]
    pub(crate) async fn placed(event: Placed) {
        SEEN.lock().unwrap().push(("placed", event.id));
    }

    #[millstream::event_handler(group = "egroup.projection")]
    pub(crate) async fn paid(event: Paid) {
        SEEN.lock().unwrap().push(("paid", event.id));
    }

    #[millstream::event_handler(group = "egroup.projection")]
    pub(crate) async fn shipped(event: Shipped) {
        SEEN.lock().unwrap().push(("shipped", event.id));
    }
}

/// The same handlers' shape, in a group that ignores what it does not know.
pub(crate) mod lenient {
    use super::*;

    pub(crate) static SEEN: Mutex<Vec<(&'static str, u64)>> = Mutex::new(Vec::new());

    #[millstream::event_handler(group = "egroup.lenient")]
    pub(crate) async fn placed(event: Placed) {
        SEEN.lock().unwrap().push(("placed", event.id));
    }

    #[millstream::event_handler(group = "egroup.lenient")]
    pub(crate) async fn paid(event: Paid) {
        SEEN.lock().unwrap().push(("paid", event.id));
    }
}

/// Two handlers of one type in one group.
pub(crate) mod twice {
    use super::*;

    #[millstream::event_handler(group = "egroup.twice")]
    pub(crate) async fn placed(_: Placed) {}

    #[millstream::event_handler(group = "egroup.twice", name = "egroup.placed-again")]
    pub(crate) async fn placed_again(_: Placed) {}
}

async fn publish_stream(app: &TestApp) {
    for id in 0..20 {
        app.publish(&Placed { id }).await.unwrap();
        if id % 4 == 3 {
            app.publish(&Refunded { id }).await.unwrap();
        }
        app.publish(&Paid { id }).await.unwrap();
        app.publish(&Shipped { id }).await.unwrap();
    }
}

#[tokio::test]
async fn one_subscription_dispatches_by_type_in_order_and_poisons_an_unknown_type() {
    let app = TestApp::start(App::from_registry().module_prefix(module_path!().to_owned() + "::projection"))
        .await
        .unwrap();
    let handlers = app.router().handlers();
    assert_eq!(handlers.len(), 1, "one route for the group: {handlers:?}");
    assert_eq!(
        (handlers[0].name.as_str(), handlers[0].group.as_str()),
        ("egroup.projection@egroup.orders", "egroup.projection")
    );

    publish_stream(&app).await;
    app.settled().await;
    let seen = projection::SEEN.lock().unwrap().clone();
    let expected: Vec<_> = (0..20).flat_map(|id| [("placed", id), ("paid", id), ("shipped", id)]).collect();
    assert_eq!(seen, expected, "every event, by its own handler, in the topic's order");
    let reasons: Vec<String> =
        app.poisoned().iter().map(|m| m.poison_reason().unwrap_or_default().to_owned()).collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert!(
        reasons[0].contains("event group `egroup.projection` has no handler of type `Refunded` (it handles OrderShipped, Paid, Placed)"),
        "{reasons:?}"
    );

    // A message that states no type.
    app.publish_message("egroup.orders", Message::new(r#"{"id":1}"#)).await.unwrap();
    app.settled().await;
    let last = app.poisoned().last().unwrap().poison_reason().unwrap_or_default().to_owned();
    assert!(last.contains("got a message without a type"), "{last}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_group_told_to_ignore_unknown_types_acks_them() {
    let app = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::lenient")
        .unknown_events("egroup.lenient", UnknownEvents::Ignore);
    let app = TestApp::start(app).await.unwrap();
    publish_stream(&app).await;
    app.settled().await;
    let seen = lenient::SEEN.lock().unwrap().clone();
    let expected: Vec<_> = (0..20).flat_map(|id| [("placed", id), ("paid", id)]).collect();
    assert_eq!(seen, expected);
    assert!(app.poisoned().is_empty(), "{:?}", app.poisoned());
    assert_eq!(app.acked("egroup.orders").len(), 20 * 3 + 5);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn two_handlers_of_one_type_in_a_group_or_a_policy_for_no_group_do_not_build() {
    let app = App::from_registry().module_prefix(module_path!().to_owned() + "::twice");
    let Err(error) = TestApp::start(app).await else { panic!("built with two handlers of one type") };
    let text = error.to_string();
    assert!(
        text.contains("event group `egroup.twice` (topic `egroup.orders`) has two handlers of `Placed`"),
        "{text}"
    );

    let app = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::lenient")
        .unknown_events("egroup.no-such-group", UnknownEvents::Ignore);
    let Err(error) = TestApp::start(app).await else { panic!("built with a policy for no group") };
    let text = error.to_string();
    assert!(text.contains("`unknown_events` names `egroup.no-such-group` no event group"), "{text}");
    assert!(text.contains("(this app's: egroup.lenient)"), "{text}");
}
