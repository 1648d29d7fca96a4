//! `shop`: an order pipeline on the embedded in-memory backend.
//!
//! ```text
//! storefront ──orders.placed──> bill ──invoices.issued──> ship ──shipments.dispatched──> track
//! ```
//!
//! Handlers are plain async fns with `#[millstream::handler]`: each one's topic comes from its
//! payload type and its output goes to its return type's topic. `ship` calls a carrier that fails now and then; its error nacks the invoice, which is
//! delivered again and shipped on a later attempt. Every order ends up tracked exactly once per
//! successful shipment; the summary shows how many attempts failed and were retried.
//!
//! ```text
//! cargo run --release -p millstream-examples --bin shop -- [--orders N] [--quiet]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millstream::prelude::*;
use millstream::Attempt;
use tokio::sync::Notify;

#[derive(Debug, Serialize, Deserialize)]
#[millstream::topic("orders.placed")]
struct OrderPlaced {
    id: u64,
    sku: String,
    qty: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::topic("invoices.issued")]
struct InvoiceIssued {
    order_id: u64,
    cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[millstream::topic("shipments.dispatched")]
struct ShipmentDispatched {
    order_id: u64,
    carrier: String,
    attempt: u32,
}

/// The price list (application state).
#[derive(Clone)]
struct Prices {
    cents_per_item: Arc<[u64]>,
}

impl Prices {
    fn load() -> Self {
        Prices { cents_per_item: Arc::from([250, 1200, 99, 4500]) }
    }

    fn of(&self, sku: &str) -> Option<u64> {
        let index = sku.strip_prefix("sku-")?.parse::<usize>().ok()?;
        self.cents_per_item.get(index).copied()
    }
}

/// A carrier API that refuses about one shipment in fifty on the first try.
#[derive(Clone)]
struct Carrier {
    name: &'static str,
}

impl Carrier {
    fn dispatch(&self, order_id: u64, attempt: u32) -> Result<(), Error> {
        // Deterministic "flakiness": a cheap hash of the order id picks the unlucky ones.
        let unlucky = order_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58 == 0;
        if unlucky && attempt == 1 {
            return Err(Error::msg(format!("carrier {} timed out for order {order_id}", self.name)));
        }
        Ok(())
    }
}

/// Progress counters, shared by the handlers and the reporter.
#[derive(Clone, Default)]
struct Stats(Arc<StatsInner>);

#[derive(Default)]
struct StatsInner {
    billed: AtomicU64,
    ship_failures: AtomicU64,
    tracked: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

/// Reads `orders.placed` (the payload's topic), publishes to `invoices.issued` (the return type's).
#[millstream::handler]
async fn bill(
    order: OrderPlaced,
    State(prices): State<Prices>,
    State(stats): State<Stats>,
) -> Result<InvoiceIssued> {
    let unit = prices.of(&order.sku).ok_or_else(|| Error::permanent(format!("unknown sku {}", order.sku)))?;
    stats.0.billed.fetch_add(1, Ordering::Relaxed);
    Ok(InvoiceIssued { order_id: order.id, cents: unit * u64::from(order.qty) })
}

/// A failure nacks the invoice; it comes back with a higher `Attempt`.
#[millstream::handler]
async fn ship(
    invoice: InvoiceIssued,
    State(carrier): State<Carrier>,
    State(stats): State<Stats>,
    Attempt(attempt): Attempt,
) -> Result<ShipmentDispatched> {
    if let Err(error) = carrier.dispatch(invoice.order_id, attempt) {
        stats.0.ship_failures.fetch_add(1, Ordering::Relaxed);
        return Err(error); // nacked: delivered again, and shipped on the next attempt
    }
    Ok(ShipmentDispatched { order_id: invoice.order_id, carrier: carrier.name.to_owned(), attempt })
}

#[millstream::handler]
async fn track(_shipment: ShipmentDispatched, State(stats): State<Stats>) {
    let tracked = stats.0.tracked.fetch_add(1, Ordering::Relaxed) + 1;
    if tracked == stats.0.target.load(Ordering::Relaxed) {
        stats.0.done.notify_one();
    }
}

struct Args {
    orders: u64,
    quiet: bool,
    /// `--graph mermaid|dot`: print the topology and exit; `--asyncapi`: its AsyncAPI document;
    /// `--docs`: the documentation page (HTML).
    graph: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { orders: 100_000, quiet: false, graph: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--orders" | "-n" => {
                let value = it.next().ok_or("--orders needs a number")?;
                args.orders = value.replace('_', "").parse().map_err(|e| format!("--orders {value}: {e}"))?;
            }
            "--quiet" | "-q" => args.quiet = true,
            "--graph" => match it.next().as_deref() {
                Some(format @ ("mermaid" | "dot")) => args.graph = Some(format.to_owned()),
                _ => return Err("--graph takes `mermaid` or `dot`".into()),
            },
            "--asyncapi" => args.graph = Some("asyncapi".to_owned()),
            "--docs" => args.graph = Some("docs".to_owned()),
            "--help" | "-h" => {
                println!(
                    "usage: shop [--orders N (default 100000)] [--quiet] [--graph mermaid|dot] [--asyncapi]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`; try --help")),
        }
    }
    if args.orders == 0 {
        return Err("--orders must be at least 1".into());
    }
    Ok(args)
}

fn shop_asyncapi() -> millstream::asyncapi::AsyncApi {
    millstream::asyncapi::AsyncApi::new("shop", env!("CARGO_PKG_VERSION"))
        .description("An order pipeline: orders are billed, shipped and tracked.")
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(problem) => {
            eprintln!("shop: {problem}");
            std::process::exit(2);
        }
    };

    if let Some(format) = &args.graph {
        let topology = App::from_registry().topology();
        match format.as_str() {
            "dot" => print!("{}", topology.dot()),
            "mermaid" => print!("{}", topology.mermaid()),
            format => {
                let document = shop_asyncapi().document(&topology);
                if format == "docs" {
                    print!("{}", millstream::docs_page::page(&document, &topology));
                } else {
                    println!("{document:#}");
                }
            }
        }
        return Ok(());
    }
    let pubsub = MemoryPubSub::new();
    let stats = Stats::default();
    stats.0.target.store(args.orders, Ordering::Relaxed);
    // Every #[handler] linked into this binary; state checked before any message is read.
    let app = App::from_registry()
        .pubsub(pubsub.clone())
        .state(Prices::load())
        .state(Carrier { name: "parcelbird" })
        .state(stats.clone())
        .build()?;
    app.start().await?;

    let started = Instant::now();
    // The storefront: places every order (waiting whenever the pipeline is full).
    let storefront = tokio::spawn({
        let pubsub = pubsub.clone();
        async move {
            for id in 0..args.orders {
                let order = OrderPlaced { id, sku: format!("sku-{}", id % 4), qty: 1 + (id % 3) as u32 };
                pubsub.publish_value(&order).await?; // to OrderPlaced's own topic
            }
            Ok::<_, Error>(())
        }
    });

    let progress = (!args.quiet).then(|| {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = &stats.0;
                eprintln!(
                    "  {:>6.1}s  billed {:>9}  tracked {:>9} / {}  carrier failures {}",
                    started.elapsed().as_secs_f64(),
                    s.billed.load(Ordering::Relaxed),
                    s.tracked.load(Ordering::Relaxed),
                    args.orders,
                    s.ship_failures.load(Ordering::Relaxed),
                );
            }
        })
    });

    storefront.await.map_err(|e| Error::msg(format!("storefront task failed: {e}")))??;
    while stats.0.tracked.load(Ordering::Relaxed) < args.orders {
        stats.0.done.notified().await;
    }
    let elapsed = started.elapsed();
    if let Some(progress) = progress {
        progress.abort();
    }
    app.close().await?;

    let s = &stats.0;
    let processed = s.tracked.load(Ordering::Relaxed);
    let failed = s.ship_failures.load(Ordering::Relaxed);
    let messages = processed * 3 + failed; // three handlers per order, plus the failed attempts
    println!("shop: {processed} orders placed, billed, shipped and tracked in {:.2}s", elapsed.as_secs_f64());
    println!("  processed : {processed} orders ({messages} handler calls)");
    println!("  failed    : {failed} carrier calls failed and were retried; 0 orders lost");
    println!(
        "  throughput: {:.0} orders/s, {:.0} msgs/s through the handlers",
        processed as f64 / elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documentation page shows every handler and every topic of the shop.
    #[test]
    fn the_docs_page_shows_every_handler_and_topic() {
        let topology = App::from_registry().topology();
        let page = millstream::docs_page::page(&shop_asyncapi().document(&topology), &topology);
        for handler in ["shop::bill", "shop::ship", "shop::track"] {
            assert!(page.contains(&format!("data-handler=\"{handler}\"")), "{handler}");
            assert!(page.contains(&format!("data-name=\"{handler}\"")), "{handler} in the drawing");
        }
        for topic in ["orders.placed", "invoices.issued", "shipments.dispatched"] {
            assert!(page.contains(&format!("data-topic=\"{topic}\"")), "{topic}");
            assert!(page.contains(&format!("data-name=\"{topic}\"")), "{topic} in the drawing");
        }
        assert!(
            !page.contains("http://")
                || page.matches("http://").all(|_| page.contains("xmlns=\"http://www.w3.org/2000/svg\""))
        );
        assert!(!page.contains("<script"), "a page without scripts");
    }
}
