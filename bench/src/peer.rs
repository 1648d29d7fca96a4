//! The `router` and `pipeline` workloads on ruststream 0.7.7 and its in-process `MemoryBroker`,
//! for a side-by-side comparison (feature `peer`).

use std::convert::Infallible;
use std::time::Instant;

use ruststream::memory::prelude::*;
use serde::{Deserialize, Serialize};

use crate::report::Outcome;
use crate::workload::{Latch, TOPIC_A, TOPIC_B};

/// The same payload as [`crate::workload::Order`]; ruststream wants its own derive on it.
/// `Outgoing` without a name: every publish names its destination with `.to(..)`.
#[derive(Clone, Debug, Serialize, Deserialize, Outgoing)]
struct PeerOrder {
    id: u64,
    sku: String,
    qty: u32,
}

impl PeerOrder {
    #[inline]
    fn consume(&self) {
        std::hint::black_box((self.id, self.sku.len(), self.qty));
    }
}

#[subscriber("bench.a")]
async fn sink_a(order: &PeerOrder, ctx: &mut Context<'_, (), Latch>) -> HandlerOutcome {
    order.consume();
    ctx.state().arrive();
    HandlerOutcome::ack()
}

#[subscriber("bench.a")]
async fn forward_a(order: &PeerOrder, Out(out): Out<impl Publisher>) -> HandlerOutcome {
    match out.message(order).to(TOPIC_B).publish().await {
        Ok(()) => HandlerOutcome::ack(),
        Err(_) => HandlerOutcome::retry(),
    }
}

#[subscriber("bench.b")]
async fn sink_b(order: &PeerOrder, ctx: &mut Context<'_, (), Latch>) -> HandlerOutcome {
    order.consume();
    ctx.state().arrive();
    HandlerOutcome::ack()
}

/// Runs `workload` (`router` or `pipeline`) on ruststream with `messages` orders.
pub(crate) async fn run(workload: &str, messages: u64) -> Outcome {
    let latch = Latch::new(messages);
    let broker = MemoryBroker::new();
    let state = latch.clone();
    let app = RustStream::new(AppInfo::new("millstream-bench", env!("CARGO_PKG_VERSION")))
        .on_startup(async move |()| Ok::<_, Infallible>(state));
    let app = match workload {
        "router" => app.with_broker(broker.clone(), |b| {
            b.include(sink_a);
        }),
        "pipeline" => app.with_broker(broker.clone(), |b| {
            b.include(forward_a).out(DefaultSlot, Publish).build();
            b.include(sink_b);
        }),
        other => panic!("unknown peer workload `{other}`"),
    };
    // `start` returns once every subscription is open: nothing published below is lost.
    let running = app.start().await.expect("ruststream app starts");
    let started = Instant::now();
    let producer = tokio::spawn({
        let publisher = broker.publisher();
        async move {
            for id in 0..messages {
                let order = PeerOrder { id, sku: "abc".to_owned(), qty: 3 };
                publisher.message(&order).to(TOPIC_A).publish().await.expect("publish");
            }
        }
    });
    latch.wait().await;
    let elapsed = started.elapsed();
    producer.await.expect("producer finished");
    running.shutdown().await.expect("ruststream app stops");
    Outcome::throughput(&format!("peer-{workload}"), messages, elapsed)
}
