//! `observability`: Prometheus metrics and health probes over HTTP, with the production
//! middleware stack (trace context, correlation id, poison queue, retry, timeout, recoverer).
//!
//! ```text
//! cargo run -p millstream-examples --bin observability            # serves until ctrl-c
//! curl -s 127.0.0.1:9464/metrics; curl -si 127.0.0.1:9464/readyz
//! cargo run -p millstream-examples --bin observability -- --self-check   # fetches its own endpoints, exits
//! ```
//!
//! The HTTP side is a few lines of plain tokio (`millstream_examples::serve_health`) so the example
//! needs no web framework; in a real service mount the same three handlers in axum, actix or hyper.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use millstream::middleware::{CorrelationId, PoisonQueue, Recoverer, Retry, Timeout, TraceContext};
use millstream::prelude::*;
use millstream::Attempt;
use millstream_examples::{get, response, serve_health};
use tokio::net::TcpListener;

#[derive(Serialize, Deserialize)]
struct Payment {
    id: u64,
    cents: u64,
}

/// Rejects one payment in ten on its first attempt (a flaky card processor).
async fn charge(payment: Payment, Attempt(attempt): Attempt) -> Result<()> {
    if payment.id.is_multiple_of(10) && attempt == 1 {
        return Err(Error::msg("card processor timed out"));
    }
    if payment.cents == 0 {
        return Err(Error::permanent("a payment of zero cents"));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let self_check = std::env::args().any(|a| a == "--self-check");
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Error::msg(format!("cannot install the Prometheus recorder: {e}")))?;

    let pubsub = MemoryPubSub::new();
    let router = App::new()
        .pubsub(pubsub.clone())
        .layer(TraceContext)
        .layer(CorrelationId)
        .layer(PoisonQueue::new("payments.poison"))
        .layer(Retry::new(2).initial_interval(Duration::from_millis(10)))
        .layer(Timeout::new(Duration::from_secs(5)))
        .layer(Recoverer)
        .route(Route::new("charge", "payments", charge).concurrency(4))
        .build()
        .unwrap();
    router.start().await?;

    let port = if self_check { 0 } else { 9464 };
    let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(Error::from)?;
    let addr = listener.local_addr().map_err(Error::from)?;
    let metrics = move |path: &str| {
        (path == "/metrics").then(|| response("200 OK", "text/plain; version=0.0.4", &prometheus.render()))
    };
    tokio::spawn(serve_health(listener, router.clone(), metrics));
    println!("observability: serving http://{addr}/metrics, /livez, /readyz");

    let sent = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn({
        let (pubsub, sent) = (pubsub.clone(), sent.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(if self_check { 1 } else { 100 }));
            for id in 1.. {
                tick.tick().await;
                let payment = Payment { id, cents: if id.is_multiple_of(25) { 0 } else { id * 100 } };
                let payload = serde_json::to_vec(&payment).expect("a payment encodes");
                if pubsub.publish("payments", Message::new(payload)).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                if self_check && id == 50 {
                    break;
                }
            }
        }
    });

    if self_check {
        producer.await.map_err(|e| Error::msg(e.to_string()))?;
        // Wait until every payment was acked (handled or poisoned), watching the metrics.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let metrics = get(addr, "/metrics").await.map_err(Error::from)?;
            let acked = metrics
                .lines()
                .find(|l| l.starts_with("millstream_messages_acked_total"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0);
            if acked as u64 >= sent.load(Ordering::Relaxed) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::msg(format!("only {acked} of 50 payments were acked")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for path in ["/readyz", "/metrics"] {
            let reply = get(addr, path).await.map_err(Error::from)?;
            println!(
                "--- GET {path}\n{}",
                reply.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n")
            );
        }
        return router.close().await;
    }
    // The router is running already: wait for ctrl-c, then shut down gracefully.
    if let Err(error) = tokio::signal::ctrl_c().await {
        eprintln!("cannot listen for ctrl-c ({error}); stopping");
    }
    producer.abort();
    router.close().await
}
