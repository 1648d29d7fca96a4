//! The link-time registry: what each macro submits, and the sorted tables.

use millstream::prelude::*;
use millstream::registry;
use millstream::{HandlerResult, Next};

#[derive(Serialize, Deserialize)]
#[millstream::topic("registry-test.placed")]
struct Placed {
    id: u64,
}

// Declared in reverse order of their names: the table is sorted, whatever the link order.
#[millstream::handler(name = "registry-test.zeta", topic = "registry-test.z", group = "g", concurrency = 3)]
async fn zeta(_: Json<serde_json::Value>, _: Metadata) {}

#[millstream::handler(service = "svc", pubsub = "other")]
async fn alpha(_: Placed) {}

#[millstream::middleware]
async fn unranked(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

#[millstream::middleware(priority = -5)]
async fn last(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

#[millstream::middleware(priority = 7, name = "registry-test.first", service = "svc")]
async fn first(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

#[test]
fn handlers_are_described_and_sorted() {
    let table = registry::handlers();
    let names: Vec<_> = table.iter().map(|d| d.info().name).collect();
    assert_eq!(names, ["registry-test.zeta", "registry::alpha"]);

    let alpha = table[1].info();
    assert_eq!(alpha.fn_name, "alpha");
    assert_eq!(alpha.path(), "registry::alpha");
    assert_eq!(alpha.topic, "registry-test.placed");
    assert_eq!(alpha.payload, Some("Placed"));
    assert_eq!(
        (alpha.service, alpha.pubsub, alpha.group, alpha.concurrency),
        (Some("svc"), Some("other"), None, 1)
    );
    assert_eq!(alpha.module_path, "registry");
    assert_eq!(alpha.file, "runtime/tests/registry.rs");
    assert_eq!(alpha.location().to_string(), format!("runtime/tests/registry.rs:{}", alpha.line));
    let declared =
        include_str!("registry.rs").lines().position(|l| l.contains("service = \"svc\", pubsub")).unwrap();
    assert_eq!(alpha.line as usize, declared + 1, "the line of the attribute");

    let zeta = table[0].info();
    assert_eq!(
        (zeta.topic, zeta.group, zeta.concurrency, zeta.payload),
        ("registry-test.z", Some("g"), 3, None)
    );
    assert_eq!(table[0].payload_type(), None);
    assert_eq!(table[1].payload_type(), Some(std::any::TypeId::of::<Placed>()));
    assert_ne!(table[0].handler_type(), table[1].handler_type());
    let route = table[1].route();
    assert_eq!((route.name(), route.topic()), ("registry::alpha", "registry-test.placed"));
}

#[test]
fn middleware_is_sorted_by_priority_then_name() {
    let table = registry::middleware();
    let order: Vec<_> = table.iter().map(|d| (d.info().name, d.info().priority)).collect();
    assert_eq!(
        order,
        [("registry-test.first", Some(7)), ("registry::last", Some(-5)), ("registry::unranked", None)]
    );
    assert_eq!(table[0].info().service, Some("svc"));
    // The same table every time: built once.
    assert!(std::ptr::eq(registry::middleware(), table));
}
