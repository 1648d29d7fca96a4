//! `#[millstream::handler]` with typed topics: the payload's type names the topic it reads, the
//! returned value's type names the topic it goes to, so handler and publisher cannot disagree.
//!
//! Run: `cargo run -p millstream-examples --bin macro_handler`

use millstream::prelude::*;
use millstream::SubscribeOptions;

#[derive(Serialize, Deserialize, Debug)]
#[millstream::topic("orders.placed")]
struct OrderPlaced {
    id: u64,
    sku: String,
    qty: u32,
}

#[derive(Serialize, Deserialize, Debug)]
#[millstream::topic("invoices.issued")]
struct InvoiceIssued {
    order_id: u64,
    cents: u64,
}

#[derive(Clone)]
struct Prices {
    cents_per_item: u64,
}

/// Reads `orders.placed` (from `OrderPlaced`), publishes to `invoices.issued` (from `InvoiceIssued`).
#[millstream::handler]
async fn bill(order: OrderPlaced, State(prices): State<Prices>) -> Result<InvoiceIssued> {
    if order.qty == 0 {
        return Err(Error::permanent(format!("order {} has no items", order.id)));
    }
    Ok(InvoiceIssued { order_id: order.id, cents: u64::from(order.qty) * prices.cents_per_item })
}

/// A string topic and options, all checked at compile time.
#[millstream::handler(topic = "audit", group = "auditors", concurrency = 4)]
async fn audit(event: Json<serde_json::Value>, meta: Metadata) {
    println!("audit: {} (trace {:?})", event.0, meta.get("trace"));
}

#[tokio::main]
async fn main() -> millstream::Result<()> {
    let pubsub = MemoryPubSub::new();
    let mut invoices = pubsub.subscribe(InvoiceIssued::NAME, SubscribeOptions::default()).await?;
    let app = App::from_registry().pubsub(pubsub.clone()).state(Prices { cents_per_item: 250 }).build()?;
    for handler in app.handlers() {
        println!("{handler}");
    }
    app.start().await?;

    // The topic comes from the type: no string to get wrong.
    pubsub.publish_value(&OrderPlaced { id: 1, sku: "tea".into(), qty: 4 }).await?;
    pubsub.publish("audit", Message::new(r#"{"who":"example"}"#).with_header("trace", "t-1")).await?;

    let delivery = invoices.next().await.expect("an invoice")?;
    let invoice: InvoiceIssued = serde_json::from_slice(delivery.message().payload())?;
    println!("invoice: {invoice:?}");
    delivery.ack().await?;

    app.shutdown();
    app.close().await
}
