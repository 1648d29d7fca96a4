//! Every key of `#[handler]`, typed topics and publish targets, and the parameter markers.
use millstream::prelude::*;
use millstream::{FromMessage, StateMap};

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::topic("invoices")]
struct Invoice {
    order: u64,
}

/// A custom extractor: marked `#[extract]` since its name is not a known one.
struct Tenant(String);

impl FromMessage for Tenant {
    type Prepared = ();
    fn prepare(_: &StateMap) -> Result<()> {
        Ok(())
    }
    fn from_message(_: &(), message: &Message, _: millstream::extract::MessageCx<'_>) -> Result<Self> {
        Ok(Tenant(message.metadata().get("tenant").unwrap_or_default().to_owned()))
    }
}

/// A payload type named like an extractor: marked `#[payload]`.
#[derive(Deserialize)]
struct State {
    _on: bool,
}

#[millstream::middleware]
async fn timing(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

#[millstream::handler(
    topic = Order,
    publish = Invoice,
    group = "billing",
    concurrency = 8,
    order = "key",
    name = "billing.bill",
    pubsub = "kafka",
    codec = millstream::JsonCodec,
    middleware = [timing, millstream::middleware::from_fn(timing)],
    service = "billing",
    crate = ::millstream,
)]
async fn bill(order: Order, #[extract] _tenant: Tenant) -> Result<Vec<Invoice>> {
    Ok(vec![Invoice { order: order.id }])
}

#[millstream::handler(topic = "switches")]
async fn switch(#[payload] _state: State, _meta: Metadata) {}

#[millstream::handler(topic = Order)]
async fn typed_topic_without_payload(_raw: Bytes) {}

mod renamed {
    // `millstream` re-exported under another name.
    pub use millstream as ms;
}

#[renamed::ms::handler(topic = "renamed", crate = renamed::ms)]
async fn through_a_reexport(_: u32) {}

#[renamed::ms::topic("renamed.type", crate = renamed::ms)]
struct Renamed;

/// Retry topics and a dead letter topic.
#[millstream::handler(topic = "shipments", retry_topics = ["500ms", "10s", "1m", "2h"], dead_letter = "shipments.dlt")]
async fn ship(_order: Json<Order>) {}

fn main() {
    let info = millstream::registry::handlers().iter().find(|d| d.info().fn_name == "bill").unwrap().info();
    assert_eq!(info.name, "billing.bill");
    assert_eq!((info.topic, info.publish), ("orders", Some("invoices")));
    assert_eq!((info.group, info.concurrency, info.pubsub, info.service), (Some("billing"), 8, Some("kafka"), Some("billing")));
    assert!(info.order_by_key);
    let ship = millstream::registry::handlers().iter().find(|d| d.info().fn_name == "ship").unwrap().info();
    assert_eq!(ship.retry_topics, [500, 10_000, 60_000, 7_200_000]);
    assert_eq!(ship.dead_letter, Some("shipments.dlt"));
    assert_eq!(<Renamed as Topic>::NAME, "renamed.type");
}
