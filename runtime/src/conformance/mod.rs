//! The backend conformance suite: one set of tests every backend runs against its real server.
//!
//! A backend's test file implements [`Harness`] (how to connect, and optionally how to restart the
//! server) and expands [`conformance_tests!`](crate::conformance_tests), which writes one `#[test]`
//! per case. Each case reads the backend's [`Features`] and runs only what they allow; a skipped
//! case says so on stderr (`conformance[<backend>] <case>: skipped, needs ...`).
//!
//! ```ignore
//! // tests/conformance_mybroker.rs
//! struct MyHarness;
//! impl millstream::conformance::Harness for MyHarness {
//!     fn name(&self) -> &str { "mybroker" }
//!     fn connect(&self) -> millstream::conformance::BoxFuture<'_, millstream::Result<Arc<dyn PubSub>>> {
//!         Box::pin(async { Ok(Arc::new(MyBroker::connect("127.0.0.1:1234").await?) as Arc<dyn PubSub>) })
//!     }
//! }
//! async fn harness() -> MyHarness { MyHarness }
//! millstream::conformance_tests!(harness);
//! ```
//!
//! Two modes: **quick** (small counts; the default, what CI runs) and **full**
//! (`MILLSTREAM_CONFORMANCE=full`: thousands of messages, 10 000 across a server restart).
//!
//! Duplicates are counted and reported, never hidden: every case that receives messages prints
//! `conformance[<backend>] <case>: expected N, unique U, deliveries D, duplicates X` on stderr, and
//! appends the same as a JSON line to the file named by `MILLSTREAM_CONFORMANCE_REPORT` when set.
//! A backend that declares [`Features::exactly_once`] fails a case that saw a duplicate without
//! injecting a failure; for the others duplicates are reported only (at-least-once allows them).

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use futures_core::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::Result;
use crate::message::Message;
use crate::pubsub::{Delivery, Features, PubSub, Subscription};

pub mod attempts;
pub mod cases;
pub mod dedup;
pub mod delay;

pub use self::attempts::check_attempt_store;
pub use self::dedup::check_dedup_store;
pub use self::delay::check_delay_store;

/// How a backend is reached by the suite.
pub trait Harness: Send + Sync + 'static {
    /// The backend's name, for reports.
    fn name(&self) -> &str;

    /// A new connection (client) to the backend. Every connection of one harness sees the same
    /// topics; closing one must not close the others.
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn PubSub>>>;

    /// What the backend guarantees. The default asks a fresh connection
    /// ([`Subscriber::features`](crate::Subscriber::features)).
    fn features(&self) -> BoxFuture<'_, Result<Features>> {
        Box::pin(async move {
            let conn = self.connect().await?;
            let features = conn.features();
            crate::pubsub::Publisher::close(&*conn).await?;
            Ok(features)
        })
    }

    /// Whether [`restart_server`](Harness::restart_server) works; the restart case runs only then.
    fn can_restart(&self) -> bool {
        false
    }

    /// Stops the backend's server and starts it again; returns once it accepts connections. Must
    /// leave the server running even when it fails part-way.
    fn restart_server(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async {
            Err(crate::error::Error::new(crate::error::ErrorKind::Config, "this harness cannot restart"))
        })
    }

    /// How long the backend, as this harness configures it, waits for a delivery to be settled
    /// before it gives the message out again (an ack deadline, an ack wait, after any heartbeat
    /// renewals have stopped); `None` where there is none. The slow-handler case runs only with
    /// one, and the forced-close case expects a message back well within it.
    fn ack_deadline(&self) -> Option<Duration> {
        None
    }

    /// Whether a delivery released just as its subscription is dropped (a forced shutdown) goes
    /// to the group's next consumer at once. NATS JetStream 2.9 answers `false`: it may give the
    /// message to the dropped subscription's pull request, still pending on the server, and it
    /// then comes back after the ack wait. The forced-close case allows such a backend its
    /// [`ack_deadline`](Harness::ack_deadline) and a margin. Default `true`.
    fn release_on_drop_is_immediate(&self) -> bool {
        true
    }

    /// Cases that this harness's server fails through a bug of its own, not of the backend, each
    /// with the reason (the bug, and where its reproduction is): they are skipped, with the reason
    /// printed. Keep the list to server bugs shown without millstream, and empty for a server
    /// that does not have them. Default: none.
    fn server_limits(&self) -> &[(&'static str, &'static str)] {
        &[]
    }

    /// Called once a case has finished (passed or not) with every topic it created, so that the
    /// harness can delete them (streams, tables). The default does nothing.
    fn cleanup<'a>(&'a self, topics: &'a [String]) -> BoxFuture<'a, ()> {
        let _ = topics;
        Box::pin(async {})
    }
}

/// The size of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Small counts, seconds per case: the default.
    Quick,
    /// Large counts (`MILLSTREAM_CONFORMANCE=full`).
    Full,
}

impl Mode {
    /// The mode chosen by the `MILLSTREAM_CONFORMANCE` environment variable (`full` or `quick`).
    pub fn from_env() -> Mode {
        match std::env::var("MILLSTREAM_CONFORMANCE").as_deref() {
            Ok("full") => Mode::Full,
            _ => Mode::Quick,
        }
    }
}

/// How long a case waits for any one expected event before failing.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// How long a case watches for something that must *not* happen (a delivery before an ack). Only
/// negative checks wait a fixed time; everything else waits for events.
pub const QUIET: Duration = Duration::from_millis(1500);

/// One running case: the harness, the backend's features and the run's mode.
pub struct Ctx {
    harness: Box<dyn Harness>,
    features: Features,
    mode: Mode,
    case: &'static str,
    run_id: String,
    topics: Mutex<Vec<String>>,
}

impl Ctx {
    /// The backend's features.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The run's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The harness.
    pub fn harness(&self) -> &dyn Harness {
        &*self.harness
    }

    /// `quick` in quick mode, `full` in full mode.
    pub fn count(&self, quick: usize, full: usize) -> usize {
        match self.mode {
            Mode::Quick => quick,
            Mode::Full => full,
        }
    }

    /// A topic name unique to this case and run: `conf.<case>.<run>.<n>` (letters, digits, `_`, `.`).
    pub fn topic(&self) -> String {
        let mut topics = self.topics.lock();
        let name = format!("conf.{}.{}.{}", self.case, self.run_id, topics.len());
        topics.push(name.clone());
        name
    }

    /// A new connection; panics if the backend does not answer.
    pub async fn connect(&self) -> Arc<dyn PubSub> {
        match within("connect", self.harness.connect()).await {
            Ok(conn) => conn,
            Err(error) => {
                panic!("conformance[{}] {}: connect failed: {error:?}", self.harness.name(), self.case)
            }
        }
    }

    /// Whether the backend has `feature`; prints the skip otherwise.
    pub fn needs(&self, what: &str, has: bool) -> bool {
        if !has {
            eprintln!("conformance[{}] {}: skipped, needs {what}", self.harness.name(), self.case);
        }
        has
    }

    /// Prints (and appends to `MILLSTREAM_CONFORMANCE_REPORT`) what `received` saw, and fails on
    /// duplicates when `strict` and the backend declares [`Features::exactly_once`].
    pub fn report(&self, label: &str, expected: usize, received: &Received, strict: bool) {
        let (unique, deliveries) = received.totals();
        let duplicates = deliveries - unique;
        let mode = if self.mode == Mode::Full { "full" } else { "quick" };
        eprintln!(
            "conformance[{}] {} {label}: expected {expected}, unique {unique}, deliveries {deliveries}, \
             duplicates {duplicates} ({mode})",
            self.harness.name(),
            self.case
        );
        if let Ok(path) = std::env::var("MILLSTREAM_CONFORMANCE_REPORT") {
            let line = serde_json::json!({
                "backend": self.harness.name(), "case": self.case, "label": label, "mode": mode,
                "expected": expected, "unique": unique, "deliveries": deliveries, "duplicates": duplicates,
            });
            if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(file, "{line}");
            }
        }
        if strict && self.features.exactly_once {
            assert_eq!(
                duplicates,
                0,
                "{} declares exactly_once but {} {label} saw {duplicates} duplicate deliveries: {:?}",
                self.harness.name(),
                self.case,
                received.duplicated()
            );
        }
    }
}

/// A case of the suite.
pub type Case = fn(Arc<Ctx>) -> BoxFuture<'static, ()>;

/// Runs one case against the harness made by `make`, on a fresh multi-threaded tokio runtime.
/// This is what each test written by [`conformance_tests!`](crate::conformance_tests) calls.
pub fn run<H, F, Fut>(case_name: &'static str, make: F, case: Case)
where
    H: Harness,
    F: FnOnce() -> Fut,
    Fut: Future<Output = H>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let harness = make().await;
        for (limited, _) in harness.server_limits() {
            assert!(
                cases::ALL.iter().any(|(name, _)| name == limited),
                "conformance[{}]: server_limits names {limited:?}, which is no case of the suite",
                harness.name()
            );
        }
        if let Some((_, why)) = harness.server_limits().iter().find(|(name, _)| *name == case_name) {
            eprintln!("conformance[{}] {case_name}: skipped, server limit: {why}", harness.name());
            return;
        }
        let features = match within("features", harness.features()).await {
            Ok(features) => features,
            Err(error) => panic!("conformance[{}] {case_name}: features: {error:?}", harness.name()),
        };
        let run_id = uuid::Uuid::now_v7().simple().to_string();
        let ctx = Arc::new(Ctx {
            harness: Box::new(harness),
            features,
            mode: Mode::from_env(),
            case: case_name,
            // The random tail of the v7 id: unique across runs against a persistent server.
            run_id: run_id[run_id.len() - 12..].to_owned(),
            topics: Mutex::new(Vec::new()),
        });
        let outcome = tokio::spawn(case(ctx.clone())).await;
        let topics = ctx.topics.lock().clone();
        ctx.harness.cleanup(&topics).await;
        if let Err(error) = outcome {
            match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("case {case_name} was cancelled: {error}"),
            }
        }
    });
    // Connections may hold background tasks; do not wait for them forever.
    runtime.shutdown_timeout(Duration::from_secs(5));
}

/// Runs every case of the suite in sequence (for a single-test setup; the macro gives one test per
/// case instead).
pub fn run_all<H, F, Fut>(make: F)
where
    H: Harness,
    F: Fn() -> Fut,
    Fut: Future<Output = H>,
{
    for (name, case) in cases::ALL {
        run(name, &make, *case);
    }
}

/// Writes one `#[test]` per conformance case, each running against the harness returned by the
/// given `async fn() -> impl Harness` (called once per case).
///
/// ```ignore
/// async fn harness() -> MyHarness { MyHarness::new() }
/// millstream::conformance_tests!(harness);
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            publish_subscribe, many_topics, concurrent_subscribers, nack_redelivers, many_nacks_all_consumed,
            no_next_before_ack, resubscribe_without_loss, subscribe_close_concurrently, order_per_key,
            concurrent_publishers_then_close, topics_isolated, cancel_subscription, close_ends_streams,
            two_groups_each_get_everything, redelivery_after_reconnect, late_group_gets_history,
            nack_with_delay, large_payloads, oversized_payload_refused, metadata_unicode_and_empty,
            server_restart, acks_out_of_order_then_reconnect, keyed_order_across_subscribers,
            attempts_are_counted, reject_never_redelivers, release_gives_back, groupless_sees_what_follows,
            join_group_under_load, slow_handler_past_the_deadline, forced_close_gives_back_at_once);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run(stringify!($case), $make, $crate::conformance::cases::$case);
            }
        )*

        /// The list above names every case of the suite, in its order (a case added to the suite
        /// but not to this macro would silently never run).
        #[test]
        fn conformance_lists_every_case() {
            let listed: &[&str] = &[$(stringify!($case)),*];
            let suite: ::std::vec::Vec<&str> =
                $crate::conformance::cases::ALL.iter().map(|(name, _)| *name).collect();
            assert_eq!(listed, &suite[..]);
        }
    };
}

/// What a case received: delivery counts per key (usually the payload text), in arrival order.
#[derive(Default)]
pub struct Received {
    state: Mutex<ReceivedState>,
    changed: Notify,
}

#[derive(Default)]
struct ReceivedState {
    counts: HashMap<String, u32>,
    order: Vec<String>,
    deliveries: usize,
}

impl Received {
    /// An empty record.
    pub fn new() -> Arc<Self> {
        Arc::new(Received::default())
    }

    /// Records one delivery of `key`; returns how many times `key` has now been seen.
    pub fn record(&self, key: &str) -> u32 {
        let mut state = self.state.lock();
        state.deliveries += 1;
        state.order.push(key.to_owned());
        let count = state.counts.entry(key.to_owned()).or_insert(0);
        *count += 1;
        let count = *count;
        drop(state);
        self.changed.notify_waiters();
        count
    }

    /// (unique keys, deliveries).
    pub fn totals(&self) -> (usize, usize) {
        let state = self.state.lock();
        (state.counts.len(), state.deliveries)
    }

    /// Whether `key` was seen.
    pub fn contains(&self, key: &str) -> bool {
        self.state.lock().counts.contains_key(key)
    }

    /// Every key in arrival order (duplicates included).
    pub fn order(&self) -> Vec<String> {
        self.state.lock().order.clone()
    }

    /// Keys seen more than once, with their counts.
    pub fn duplicated(&self) -> Vec<(String, u32)> {
        let state = self.state.lock();
        let mut dups: Vec<_> =
            state.counts.iter().filter(|(_, c)| **c > 1).map(|(k, c)| (k.clone(), *c)).collect();
        dups.sort();
        dups
    }

    /// Waits until `unique` distinct keys were seen; panics after [`TIMEOUT`] without progress.
    pub async fn wait_unique(&self, unique: usize, what: &str) {
        let mut last = usize::MAX;
        loop {
            let notified = self.changed.notified();
            let now = self.state.lock().counts.len();
            if now >= unique {
                return;
            }
            if now != last {
                last = now;
            }
            if tokio::time::timeout(TIMEOUT, notified).await.is_err() {
                let now = self.state.lock().counts.len();
                if now == last {
                    panic!("timed out waiting for {what}: {now} of {unique} distinct messages after {TIMEOUT:?} without progress");
                }
            }
        }
    }
}

/// What a consumer does with a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Acknowledge it.
    Ack,
    /// Nack it (redeliver).
    Nack,
}

/// Spawns a task reading `sub` until it ends: each delivery is recorded in `received` under
/// `key(message)`, then acked or nacked as `decide(message, times seen)` says. Stream errors are
/// tolerated (a backend reports a lost connection that way) and counted.
pub fn spawn_consumer(
    mut sub: Subscription,
    received: Arc<Received>,
    key: fn(&Message) -> String,
    decide: impl Fn(&Message, u32) -> Action + Send + 'static,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut errors = 0;
        while let Some(item) = sub.next().await {
            match item {
                Ok(delivery) => {
                    let k = key(delivery.message());
                    let seen = received.record(&k);
                    let action = decide(delivery.message(), seen);
                    let result = match action {
                        Action::Ack => delivery.ack().await,
                        Action::Nack => delivery.nack().await,
                    };
                    if let Err(error) = result {
                        errors += 1;
                        tracing::warn!(%error, "conformance consumer: settling failed");
                    }
                }
                Err(error) => {
                    errors += 1;
                    if errors <= 3 {
                        eprintln!("conformance consumer: stream error: {error:?}");
                    }
                }
            }
        }
        errors
    })
}

/// The payload as text (lossy).
pub fn text(message: &Message) -> String {
    String::from_utf8_lossy(message.payload()).into_owned()
}

/// Runs `fut` with [`TIMEOUT`], panicking with `what` when it runs out.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {TIMEOUT:?}: {what}"),
    }
}

/// The next delivery, which must arrive within [`TIMEOUT`] and not be an error.
/// Stream errors (a backend reporting a lost connection) are read past for as long as that lasts.
pub async fn next_delivery(sub: &mut Subscription, what: &str) -> Delivery {
    let mut last_error = None;
    let next = async {
        loop {
            match sub.next().await {
                Some(Ok(delivery)) => return delivery,
                Some(Err(error)) => last_error = Some(format!("{error:?}")),
                None => panic!("{what}: the subscription ended"),
            }
        }
    };
    match tokio::time::timeout(TIMEOUT, next).await {
        Ok(delivery) => delivery,
        Err(_) => panic!("timed out after {TIMEOUT:?}: {what}; last stream error: {last_error:?}"),
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A process-unique number, for group names.
pub fn unique() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}
