//! The worked example of `docs/middleware.md`: a middleware written three ways (an async fn with
//! `from_fn`, `#[millstream::middleware]`, the `Middleware` trait), stacked with built-in layers
//! and a tower layer, and checked with `TestApp`.
//!
//! Run: `cargo run -p millstream-examples --bin writing_middleware`

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millstream::middleware::tower::TowerLayer;
use millstream::middleware::{from_fn, BoxFuture, Middleware, PoisonQueue, Recoverer, Retry, Timeout};
use millstream::prelude::*;
use millstream::testing::TestApp;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[millstream::topic("docs.orders")]
struct Order {
    id: u64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[millstream::topic("docs.invoices")]
struct Invoice {
    order: u64,
}

/// 1. An async fn `(Message, Next) -> HandlerResult`, made a layer with `from_fn`.
async fn timing(message: Message, next: Next) -> HandlerResult {
    let started = Instant::now();
    let handler = next.handler_name().to_owned();
    let result = next.run(message).await;
    println!("[timing] {handler}: {:?}, ok = {}", started.elapsed(), result.is_ok());
    result
}

/// 2. The same shape with `#[millstream::middleware]`: a handler names it in its `middleware`
/// list (with `priority = N` it would be router-wide for `App::from_registry()`).
#[millstream::middleware]
async fn require_tenant(message: Message, next: Next) -> HandlerResult {
    if message.metadata().get("tenant").is_none() {
        return Err(Error::permanent("no tenant header"));
    }
    next.run(message).await
}

/// 3. The trait, for a layer with settings: copies a header of the input onto every output.
struct CopyHeader {
    key: &'static str,
}

impl Middleware for CopyHeader {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        let key = self.key;
        // Read what is needed before handing the message on; the future must own what it uses.
        let value = message.metadata().get(key).map(str::to_owned);
        Box::pin(async move {
            let mut outputs = next.run(message).await?;
            if let Some(value) = value {
                for output in &mut outputs {
                    output.message.metadata_mut().insert(key, value.as_str());
                }
            }
            Ok(outputs)
        })
    }
}

/// Fails its first call for order 2, to show the retry.
#[derive(Clone, Default)]
struct Ledger(Arc<AtomicU32>);

#[millstream::handler(middleware = [require_tenant])]
async fn bill(order: Order, State(ledger): State<Ledger>) -> Result<Invoice, Error> {
    if order.id == 2 && ledger.0.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(Error::msg("the ledger is busy"));
    }
    Ok(Invoice { order: order.id })
}

#[tokio::main]
async fn main() -> millstream::Result<()> {
    // Router-wide layers, outermost first; a handler's own layers (`require_tenant`) run inside
    // them. The four built-in layers in a row run as one fused future.
    let app = App::new()
        .handler(bill)
        .state(Ledger::default())
        .layer(from_fn(timing))
        .layer(PoisonQueue::new("docs.poison"))
        .layer(Retry::new(2).initial_interval(Duration::from_millis(10)))
        .layer(Timeout::new(Duration::from_secs(5)))
        .layer(Recoverer)
        .layer(CopyHeader { key: "tenant" })
        // Any tower layer: here at most 4 messages in the handler at once.
        .layer(TowerLayer::new(tower::limit::ConcurrencyLimitLayer::new(4)));
    let app = TestApp::start(app).await?;

    for id in [1, 2] {
        let order = Message::new(format!(r#"{{"id":{id}}}"#)).with_header("tenant", "acme");
        app.publish_message(Order::NAME, order).await?;
    }
    app.publish(&Order { id: 3 }).await?; // no tenant header
    app.settled().await;

    // Order 2 failed once and was retried; order 3 was refused and poisoned, not retried.
    let mut invoiced: Vec<u64> = app.published::<Invoice>().iter().map(|invoice| invoice.order).collect();
    invoiced.sort_unstable();
    assert_eq!(invoiced, [1, 2]);
    for invoice in app.published_on(Invoice::NAME) {
        assert_eq!(invoice.metadata().get("tenant"), Some("acme"), "CopyHeader stamped it");
    }
    let poisoned = app.poisoned();
    assert_eq!(poisoned.len(), 1);
    let reason = poisoned[0].metadata().get("millstream.poison.reason");
    assert_eq!(reason, Some("no tenant header"));
    println!("2 invoices, 1 poisoned ({})", reason.unwrap_or_default());
    app.stop().await
}
