//! `App`: handlers from the registry, scoped by service tag, with state and named pub/subs; and
//! what `build()` says when something is missing (every problem at once, before any message).
//!
//! Run: `cargo run -p millstream-examples --bin macro_app`

use std::sync::Arc;

use millstream::prelude::*;
use millstream::SubscribeOptions;

#[derive(Serialize, Deserialize)]
#[millstream::topic("shipping.requested")]
struct ShipmentRequested {
    order: u64,
}

#[derive(Serialize, Deserialize, Debug)]
#[millstream::topic("shipping.labels")]
struct Label {
    order: u64,
    carrier: String,
}

#[derive(Clone)]
struct Carrier(Arc<str>);

/// Part of the `shipping` service; runs on the pub/sub named "warehouse".
#[millstream::handler(service = "shipping", pubsub = "warehouse")]
async fn label(request: ShipmentRequested, State(carrier): State<Carrier>) -> Label {
    Label { order: request.order, carrier: carrier.0.to_string() }
}

/// Part of another service, in the same binary: left out when the app selects `shipping`.
#[millstream::handler(service = "reporting", topic = "reports.daily")]
async fn report(_: Json<serde_json::Value>) {}

#[tokio::main]
async fn main() -> millstream::Result<()> {
    // Missing state and a missing named pub/sub: one error lists both.
    let error = App::from_registry().service("shipping").pubsub(MemoryPubSub::new()).build().unwrap_err();
    println!("build failed as expected:\n{error}\n");

    let warehouse = MemoryPubSub::new();
    let mut labels = warehouse.subscribe(Label::NAME, SubscribeOptions::default()).await?;
    let app = App::from_registry()
        .service("shipping")
        .pubsub(MemoryPubSub::new())
        .pubsub_named("warehouse", warehouse.clone())
        .state(Carrier("postal".into()))
        .build()?;
    println!("running: {:?}", app.handlers().iter().map(|h| h.name.as_str()).collect::<Vec<_>>());
    app.start().await?;
    warehouse.publish_value(&ShipmentRequested { order: 42 }).await?;
    let delivery = labels.next().await.expect("a label")?;
    let label: Label = serde_json::from_slice(delivery.message().payload())?;
    println!("label: {label:?}");
    delivery.ack().await?;
    app.shutdown();
    app.close().await
}
