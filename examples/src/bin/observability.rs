//! `observability`: Prometheus metrics and health probes over HTTP, with the production
//! middleware stack (trace context, correlation id, poison queue, retry, timeout, recoverer).
//!
//! ```text
//! cargo run -p millstream-examples --bin observability            # serves until ctrl-c
//! curl -s 127.0.0.1:9464/metrics; curl -si 127.0.0.1:9464/readyz
//! cargo run -p millstream-examples --bin observability -- --self-check   # fetches its own endpoints, exits
//! ```
//!
//! The HTTP side is a few lines of plain tokio so the example needs no web framework; in a real
//! service mount the same three handlers in axum, actix or hyper.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use millstream::middleware::{CorrelationId, PoisonQueue, Recoverer, Retry, Timeout, TraceContext};
use millstream::prelude::*;
use millstream::Attempt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// `/metrics`, `/livez` and `/readyz`.
async fn serve(listener: TcpListener, router: Router, prometheus: PrometheusHandle) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let (router, prometheus) = (router.clone(), prometheus.clone());
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).await.unwrap_or(0);
            let line = String::from_utf8_lossy(&request[..n]);
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let health = router.health();
            let reply = match path {
                "/metrics" => response("200 OK", "text/plain; version=0.0.4", &prometheus.render()),
                "/livez" if health.live => response("200 OK", "text/plain", "live\n"),
                "/livez" => response("503 Service Unavailable", "text/plain", "not live\n"),
                "/readyz" => {
                    let body: String = health
                        .handlers
                        .iter()
                        .map(|(name, up)| format!("{name}: {}\n", if *up { "up" } else { "down" }))
                        .collect();
                    let status = if health.ready { "200 OK" } else { "503 Service Unavailable" };
                    response(status, "text/plain", &body)
                }
                _ => response("404 Not Found", "text/plain", "try /metrics, /livez or /readyz\n"),
            };
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
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
    tokio::spawn(serve(listener, router.clone(), prometheus));
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
    router.run_until(tokio::signal::ctrl_c()).await
}
