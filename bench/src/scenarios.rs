//! The scenarios on millstream and on the bare-channel baseline. Each returns what it measured;
//! the caller adds the peak RSS.

use std::future::Future;
use std::time::{Duration, Instant};

use millstream::{App, MemoryPubSub, Message, Publisher, Route, Router, State, SubscribeOptions, Subscriber};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::report::{LatencyStats, Outcome};
use crate::workload::{encode, quantile, Latch, Order, Stamps, TOPIC_A, TOPIC_B};

/// Messages per second the latency scenario publishes at.
pub(crate) const LATENCY_RATE: u64 = 50_000;
/// How long each of the latency scenario's runs publishes (when enough messages are asked for).
pub(crate) const LATENCY_SECONDS: u64 = 2;
/// How many runs of each side the latency scenario alternates (baseline first, then router
/// first, ...); each percentile reported is the median of its runs.
pub(crate) const LATENCY_PAIRS: usize = 3;

/// Capacity of the baseline's channel (the same as `MemoryPubSub`'s default queue).
const CHANNEL_CAPACITY: usize = 1024;

fn throughput(scenario: &str, messages: u64, elapsed: Duration) -> Outcome {
    Outcome::throughput(scenario, messages, elapsed)
}

/// A bare bounded tokio channel: one task encodes and sends, one receives and decodes.
pub(crate) async fn baseline(messages: u64) -> Outcome {
    let latch = Latch::new(messages);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHANNEL_CAPACITY);
    let started = Instant::now();
    let consumer = tokio::spawn({
        let latch = latch.clone();
        async move {
            while let Some(payload) = rx.recv().await {
                let order: Order = serde_json::from_slice(&payload).expect("an order decodes");
                order.consume();
                if latch.arrive() {
                    break;
                }
            }
        }
    });
    tokio::spawn(async move {
        for id in 0..messages {
            tx.send(encode(id)).await.expect("consumer alive");
        }
    });
    latch.wait().await;
    let elapsed = started.elapsed();
    consumer.await.expect("consumer finished");
    throughput("baseline", messages, elapsed)
}

/// Publishes `messages` orders to `topic`, one after the other, from a task of its own.
fn spawn_producer(pubsub: MemoryPubSub, messages: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for id in 0..messages {
            pubsub.publish(TOPIC_A, Message::new(encode(id))).await.expect("publish");
        }
    })
}

/// `MemoryPubSub` alone: publish → subscribe → decode → ack.
pub(crate) async fn pubsub(messages: u64) -> Outcome {
    let pubsub = MemoryPubSub::new();
    let latch = Latch::new(messages);
    let mut subscription =
        pubsub.subscribe(TOPIC_A, SubscribeOptions::group("bench")).await.expect("subscribe");
    let started = Instant::now();
    let consumer = tokio::spawn({
        let latch = latch.clone();
        async move {
            while let Some(delivery) = subscription.next().await {
                let delivery = delivery.expect("delivery");
                let order: Order =
                    serde_json::from_slice(delivery.message().payload()).expect("an order decodes");
                order.consume();
                delivery.ack().await.expect("ack");
                if latch.arrive() {
                    break;
                }
            }
        }
    });
    let producer = spawn_producer(pubsub.clone(), messages);
    latch.wait().await;
    let elapsed = started.elapsed();
    producer.await.expect("producer finished");
    consumer.await.expect("consumer finished");
    throughput("pubsub", messages, elapsed)
}

async fn sink(order: Order, State(latch): State<Latch>) {
    order.consume();
    latch.arrive();
}

async fn forward(order: Order) -> Order {
    order
}

/// Starts `router`, publishes `messages` orders to topic A, waits for the latch, stops it.
async fn run_router(router: Router, pubsub: MemoryPubSub, latch: Latch, messages: u64) -> Duration {
    router.start().await.expect("router starts");
    let started = Instant::now();
    let producer = spawn_producer(pubsub, messages);
    latch.wait().await;
    let elapsed = started.elapsed();
    producer.await.expect("producer finished");
    router.close().await.expect("router stops");
    elapsed
}

/// One typed handler behind the router.
pub(crate) async fn router(messages: u64) -> Outcome {
    let pubsub = MemoryPubSub::new();
    let latch = Latch::new(messages);
    let router = App::new()
        .pubsub(pubsub.clone())
        .state(latch.clone())
        .route(Route::new("sink", TOPIC_A, sink))
        .build()
        .unwrap();
    let elapsed = run_router(router, pubsub, latch, messages).await;
    throughput("router", messages, elapsed)
}

/// The keys of the keyed scenarios: sixteen, so that four lanes all get work.
const KEYS: [&str; 16] =
    ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "k10", "k11", "k12", "k13", "k14", "k15"];

/// Publishes `messages` orders to topic A, each with a key when `keyed`.
fn spawn_keyed_producer(pubsub: MemoryPubSub, messages: u64, keyed: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for id in 0..messages {
            let mut message = Message::new(encode(id));
            if keyed {
                message = message.with_key(KEYS[(id % 16) as usize]);
            }
            pubsub.publish(TOPIC_A, message).await.expect("publish");
        }
    })
}

/// `router` with `concurrency` lanes; with `keyed`, keyed messages and lanes ordered by key.
pub(crate) async fn router_lanes(scenario: &str, messages: u64, concurrency: usize, keyed: bool) -> Outcome {
    let pubsub = MemoryPubSub::new();
    let latch = Latch::new(messages);
    let mut route = Route::new("sink", TOPIC_A, sink).concurrency(concurrency);
    if keyed {
        route = route.order_by_key();
    }
    let router = App::new().pubsub(pubsub.clone()).state(latch.clone()).route(route).build().unwrap();
    router.start().await.expect("router starts");
    let started = Instant::now();
    let producer = spawn_keyed_producer(pubsub, messages, keyed);
    latch.wait().await;
    let elapsed = started.elapsed();
    producer.await.expect("producer finished");
    router.close().await.expect("router stops");
    throughput(scenario, messages, elapsed)
}

/// The most messages the 1 ms handler scenarios handle (one lane takes about 1.1 ms each).
pub(crate) const SLOW_MAX: u64 = 2_000;

async fn slow_sink(order: Order, State(latch): State<Latch>) {
    tokio::time::sleep(Duration::from_millis(1)).await;
    order.consume();
    latch.arrive();
}

/// A handler that takes 1 ms (waiting, as on a database), with `concurrency` lanes: how
/// throughput scales with the lanes.
pub(crate) async fn slow_lanes(scenario: &str, messages: u64, concurrency: usize) -> Outcome {
    let messages = messages.min(SLOW_MAX);
    let pubsub = MemoryPubSub::new();
    let latch = Latch::new(messages);
    let route = Route::new("slow", TOPIC_A, slow_sink).concurrency(concurrency);
    let router = App::new().pubsub(pubsub.clone()).state(latch.clone()).route(route).build().unwrap();
    let elapsed = run_router(router, pubsub, latch, messages).await;
    throughput(scenario, messages, elapsed)
}

/// The stack the issue names: retry + poison queue + timeout + correlation id + recoverer.
fn middleware_stack(app: App) -> App {
    use millstream::middleware::{CorrelationId, PoisonQueue, Recoverer, Retry, Timeout};
    app.layer(CorrelationId)
        .layer(PoisonQueue::new("bench.poison"))
        .layer(Retry::new(3))
        .layer(Timeout::new(std::time::Duration::from_secs(30)))
        .layer(Recoverer)
}

/// `router` behind [`middleware_stack`].
pub(crate) async fn router_mw(messages: u64) -> Outcome {
    let pubsub = MemoryPubSub::new();
    let latch = Latch::new(messages);
    let router = middleware_stack(App::new().pubsub(pubsub.clone()).state(latch.clone()))
        .route(Route::new("sink", TOPIC_A, sink))
        .build()
        .unwrap();
    let elapsed = run_router(router, pubsub, latch, messages).await;
    throughput("router-mw", messages, elapsed)
}

/// The most messages the drain scenarios queue up (all are in memory at once).
pub(crate) const DRAIN_MAX: u64 = 100_000;

/// The drain scenarios' handler state: the latch, and a gate that holds the first message.
#[derive(Clone)]
struct Gate {
    latch: Latch,
    open: std::sync::Arc<tokio::sync::Semaphore>,
}

async fn gated_sink(order: Order, State(gate): State<Gate>) {
    if order.id == 0 {
        let _permit = gate.open.acquire().await.expect("the gate is never closed");
    }
    order.consume();
    gate.latch.arrive();
}

/// The handler path alone: `min(N, DRAIN_MAX)` messages are queued while the handler holds the
/// first one, then the router drains the queue with nothing else running. Unlike `router`, whose
/// rate also depends on how producer and consumer wake each other (a faster consumer that empties
/// the queue is woken once per message), this measures what each message costs the consumer.
/// With `layered`, behind [`middleware_stack`].
pub(crate) async fn drain(messages: u64, layered: bool) -> Outcome {
    let count = messages.min(DRAIN_MAX);
    let pubsub = MemoryPubSub::new().capacity(usize::try_from(count).expect("a small count") + 1);
    let gate = Gate { latch: Latch::new(count), open: std::sync::Arc::new(tokio::sync::Semaphore::new(0)) };
    let mut app = App::new().pubsub(pubsub.clone()).state(gate.clone());
    if layered {
        app = middleware_stack(app);
    }
    let router = app.route(Route::new("sink", TOPIC_A, gated_sink)).build().unwrap();
    router.start().await.expect("router starts");
    for id in 0..count {
        pubsub.publish(TOPIC_A, Message::new(encode(id))).await.expect("publish");
    }
    let started = Instant::now();
    gate.open.add_permits(1);
    gate.latch.wait().await;
    let elapsed = started.elapsed();
    router.close().await.expect("router stops");
    throughput(if layered { "drain-mw" } else { "drain" }, count, elapsed)
}

/// Handler A returns the order (published to topic B); handler B consumes it.
pub(crate) async fn pipeline(messages: u64) -> Outcome {
    let pubsub = MemoryPubSub::new();
    let latch = Latch::new(messages);
    let router = App::new()
        .pubsub(pubsub.clone())
        .state(latch.clone())
        .route(Route::new("forward", TOPIC_A, forward).publish(TOPIC_B))
        .route(Route::new("sink", TOPIC_B, sink))
        .build()
        .unwrap();
    let elapsed = run_router(router, pubsub, latch, messages).await;
    throughput("pipeline", messages, elapsed)
}

/// Publishes ids `0..count` at `rate` per second: every millisecond tick it sends what is due by
/// then, so a late tick is made up in a batch instead of lowering the rate.
async fn paced<F, Fut>(count: u64, rate: u64, mut publish: F)
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut next = 0;
    while next < count {
        ticker.tick().await;
        let due = started.elapsed().as_nanos() * u128::from(rate) / 1_000_000_000 + 1;
        let due = u64::try_from(due).unwrap_or(u64::MAX).min(count);
        while next < due {
            publish(next).await;
            next += 1;
        }
    }
}

#[derive(Clone)]
struct Timed {
    latch: Latch,
    stamps: Stamps,
}

async fn timed_sink(order: Order, State(timed): State<Timed>) {
    timed.stamps.received(order.id);
    order.consume();
    timed.latch.arrive();
}

fn stats(stamps: &Stamps) -> LatencyStats {
    let sorted = stamps.latencies();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    LatencyStats {
        p50_us: us(quantile(&sorted, 0.50)),
        p99_us: us(quantile(&sorted, 0.99)),
        p999_us: us(quantile(&sorted, 0.999)),
        max_us: us(quantile(&sorted, 1.0)),
    }
}

async fn latency_router(count: u64, rate: u64) -> LatencyStats {
    let pubsub = MemoryPubSub::new();
    let timed = Timed { latch: Latch::new(count), stamps: Stamps::new(count) };
    let router = App::new()
        .pubsub(pubsub.clone())
        .state(timed.clone())
        .route(Route::new("timed", TOPIC_A, timed_sink))
        .build()
        .unwrap();
    router.start().await.expect("router starts");
    let producer = tokio::spawn({
        let stamps = timed.stamps.clone();
        async move {
            paced(count, rate, |id| {
                let message = Message::new(encode(id));
                stamps.sent(id);
                let publish = pubsub.publish(TOPIC_A, message);
                async move { publish.await.expect("publish") }
            })
            .await;
        }
    });
    timed.latch.wait().await;
    producer.await.expect("producer finished");
    router.close().await.expect("router stops");
    stats(&timed.stamps)
}

async fn latency_baseline(count: u64, rate: u64) -> LatencyStats {
    let timed = Timed { latch: Latch::new(count), stamps: Stamps::new(count) };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHANNEL_CAPACITY);
    let consumer = tokio::spawn({
        let timed = timed.clone();
        async move {
            while let Some(payload) = rx.recv().await {
                let order: Order = serde_json::from_slice(&payload).expect("an order decodes");
                timed.stamps.received(order.id);
                order.consume();
                if timed.latch.arrive() {
                    break;
                }
            }
        }
    });
    let producer = tokio::spawn({
        let stamps = timed.stamps.clone();
        async move {
            paced(count, rate, |id| {
                let payload = encode(id);
                stamps.sent(id);
                let tx = tx.clone();
                async move { tx.send(payload).await.expect("consumer alive") }
            })
            .await;
        }
    });
    timed.latch.wait().await;
    producer.await.expect("producer finished");
    consumer.await.expect("consumer finished");
    stats(&timed.stamps)
}

/// The router and the baseline at a fixed rate: publish-to-handler latency percentiles, each the
/// median of [`LATENCY_PAIRS`] runs per side, the two sides alternating which goes first (so that
/// neither always meets a warm or a cold machine).
pub(crate) async fn latency(messages: u64) -> Outcome {
    let count = messages.min(LATENCY_RATE * LATENCY_SECONDS);
    let mut baseline = Vec::with_capacity(LATENCY_PAIRS);
    let mut router = Vec::with_capacity(LATENCY_PAIRS);
    let started = Instant::now();
    for pair in 0..LATENCY_PAIRS {
        if pair % 2 == 0 {
            baseline.push(latency_baseline(count, LATENCY_RATE).await);
            router.push(latency_router(count, LATENCY_RATE).await);
        } else {
            router.push(latency_router(count, LATENCY_RATE).await);
            baseline.push(latency_baseline(count, LATENCY_RATE).await);
        }
    }
    let elapsed = started.elapsed() / (2 * LATENCY_PAIRS as u32);
    Outcome::latency(count, elapsed, LATENCY_RATE, median_stats(&router), median_stats(&baseline))
}

/// Each percentile's median over `runs`.
fn median_stats(runs: &[LatencyStats]) -> LatencyStats {
    let median = |field: fn(&LatencyStats) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(field).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    LatencyStats {
        p50_us: median(|s| s.p50_us),
        p99_us: median(|s| s.p99_us),
        p999_us: median(|s| s.p999_us),
        max_us: median(|s| s.max_us),
    }
}
