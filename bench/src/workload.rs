//! What every scenario shares: the payload type, the completion latch, the latency side table
//! and the peak-RSS probe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// The first topic every scenario publishes to.
pub(crate) const TOPIC_A: &str = "bench.a";
/// The topic the first pipeline handler forwards to.
pub(crate) const TOPIC_B: &str = "bench.b";

/// The payload: `{"id":<n>,"sku":"abc","qty":3}` once encoded as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Order {
    pub(crate) id: u64,
    pub(crate) sku: String,
    pub(crate) qty: u32,
}

impl millstream::Publishable for Order {}

impl Order {
    /// The `id`-th order.
    pub(crate) fn new(id: u64) -> Self {
        Order { id, sku: "abc".to_owned(), qty: 3 }
    }

    /// Touches every field so that decoding cannot be optimised away.
    #[inline]
    pub(crate) fn consume(&self) {
        std::hint::black_box((self.id, self.sku.len(), self.qty));
    }
}

/// Encodes the `id`-th order the way every publisher in the bench does.
#[inline]
pub(crate) fn encode(id: u64) -> Vec<u8> {
    serde_json::to_vec(&Order::new(id)).expect("an order encodes")
}

/// Counts arrivals; wakes the waiter when the target is reached. No sleeping, no polling.
#[derive(Clone)]
pub(crate) struct Latch(Arc<LatchInner>);

struct LatchInner {
    target: u64,
    seen: AtomicU64,
    done: Notify,
}

impl Latch {
    /// A latch that opens after `target` arrivals.
    pub(crate) fn new(target: u64) -> Self {
        Latch(Arc::new(LatchInner { target, seen: AtomicU64::new(0), done: Notify::new() }))
    }

    /// One more message handled; returns true for the last one.
    #[inline]
    pub(crate) fn arrive(&self) -> bool {
        let last = self.0.seen.fetch_add(1, Ordering::AcqRel) + 1 == self.0.target;
        if last {
            // `notify_one` keeps a permit when nobody waits yet, so the wake-up cannot be lost.
            self.0.done.notify_one();
        }
        last
    }

    /// Resolves once `target` messages have arrived.
    pub(crate) async fn wait(&self) {
        while self.0.seen.load(Ordering::Acquire) < self.0.target {
            self.0.done.notified().await;
        }
    }
}

/// Send and receive times of every message, indexed by order id, in nanoseconds since `base`.
/// Keeps the payload identical to the throughput scenarios (the timestamp is not in the message).
#[derive(Clone)]
pub(crate) struct Stamps(Arc<StampsInner>);

struct StampsInner {
    base: Instant,
    sent: Box<[AtomicU64]>,
    received: Box<[AtomicU64]>,
}

impl Stamps {
    /// Room for `count` messages.
    pub(crate) fn new(count: u64) -> Self {
        let table = || (0..count).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        Stamps(Arc::new(StampsInner { base: Instant::now(), sent: table(), received: table() }))
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Message `id` is being published now.
    #[inline]
    pub(crate) fn sent(&self, id: u64) {
        self.0.sent[id as usize].store(self.now(), Ordering::Relaxed);
    }

    /// Message `id` reached its handler now.
    #[inline]
    pub(crate) fn received(&self, id: u64) {
        self.0.received[id as usize].store(self.now(), Ordering::Relaxed);
    }

    /// Publish-to-handler latencies, sorted.
    pub(crate) fn latencies(&self) -> Vec<Duration> {
        let mut all: Vec<Duration> = self
            .0
            .sent
            .iter()
            .zip(self.0.received.iter())
            .map(|(s, r)| {
                let (s, r) = (s.load(Ordering::Relaxed), r.load(Ordering::Relaxed));
                Duration::from_nanos(r.saturating_sub(s))
            })
            .collect();
        all.sort_unstable();
        all
    }
}

/// The value at quantile `q` (0..=1) of sorted `values`.
pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// This process's peak resident set size (VmHWM), in MiB.
pub(crate) fn peak_rss_mib() -> f64 {
    let kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    kib as f64 / 1024.0
}

/// CPU time (user + system, all threads) this process has used so far, in seconds.
///
/// Read from `/proc/self/stat` (clock ticks, usually 10 ms). Less disturbed than wall time when
/// other programs share the machine, so it shows the cost of a change even on a busy host.
pub(crate) fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    ticks as f64 / CLOCK_TICKS_PER_SECOND
}

/// `sysconf(_SC_CLK_TCK)`, which is 100 on every Linux configuration in use.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
