//! Test support: a recording wrapper around `MemoryPubSub` and event waiting.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use millstream::pubsub::{AckSink, Acker, OpFuture, Settle, Token};
use millstream::{Delivery, MemoryPubSub, Message, Publisher, SubscribeOptions, Subscriber, Subscription};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Generous: tests wait for events, never for time.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// What happened, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Published { topic: String, payload: String },
    Acked { topic: String, payload: String },
    Nacked { topic: String, payload: String },
    Rejected { topic: String, payload: String, reason: String },
    Released { topic: String, payload: String },
    PublisherClosed,
}

#[derive(Clone, Default)]
pub struct Log {
    events: Arc<Mutex<Vec<Event>>>,
    changed: Arc<Notify>,
}

impl Log {
    pub fn push(&self, event: Event) {
        self.events.lock().push(event);
        self.changed.notify_waiters();
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    pub fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.events.lock().iter().filter(|e| pred(e)).count()
    }

    /// Waits until `pred` holds over the events, or panics after `TIMEOUT`.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Event]) -> bool) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let notified = self.changed.notified();
            if pred(&self.events.lock()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}; events: {:#?}", self.events());
            }
        }
    }
}

/// A `MemoryPubSub` that records publishes, acks and nacks. `close()` is recorded but does not
/// close the inner pub/sub, so tests can look at what is left after a router stopped.
#[derive(Clone)]
pub struct Recording {
    pub inner: MemoryPubSub,
    pub log: Log,
}

impl Recording {
    pub fn new() -> Self {
        Recording { inner: MemoryPubSub::new(), log: Log::default() }
    }
}

fn text(message: &Message) -> String {
    String::from_utf8_lossy(message.payload()).into_owned()
}

impl Publisher for Recording {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        OpFuture::boxed(async move {
            let payload = text(&message);
            self.inner.publish(topic, message).await?;
            self.log.push(Event::Published { topic: topic.to_owned(), payload });
            Ok(())
        })
    }

    fn close(&self) -> OpFuture<'_> {
        self.log.push(Event::PublisherClosed);
        OpFuture::ready(Ok(()))
    }
}

struct RecordingSink {
    topic: String,
    log: Log,
    ackers: Mutex<HashMap<u64, (Acker, String)>>,
    next: AtomicU64,
}

impl AckSink for RecordingSink {
    fn settle(&self, token: Token, _message: Option<Message>, how: Settle) -> OpFuture<'static> {
        let (acker, payload) = self.ackers.lock().remove(&token.get()).expect("settled once");
        let topic = self.topic.clone();
        if matches!(how, Settle::Release) {
            // Sent over a slow network: a router that closed its backends without waiting for
            // the release would close them first.
            let log = self.log.clone();
            return OpFuture::boxed(async move {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                log.push(Event::Released { topic, payload });
                acker.settle(Settle::Release).await
            });
        }
        self.log.push(match &how {
            Settle::Ack => Event::Acked { topic, payload },
            Settle::Reject(reason) => Event::Rejected { topic, payload, reason: reason.to_string() },
            Settle::Release => Event::Released { topic, payload },
            _ => Event::Nacked { topic, payload },
        });
        acker.settle(how)
    }
}

impl Subscriber for Recording {
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription> {
        OpFuture::boxed(async move {
            let sub = self.inner.subscribe(topic, options).await?;
            let sink = Arc::new(RecordingSink {
                topic: topic.to_owned(),
                log: self.log.clone(),
                ackers: Mutex::new(HashMap::new()),
                next: AtomicU64::new(0),
            });
            Ok(Subscription::new(sub.map(move |item| {
                item.map(|delivery| {
                    let (message, attempt, acker) = delivery.into_parts();
                    let token = sink.next.fetch_add(1, Ordering::Relaxed);
                    sink.ackers.lock().insert(token, (acker, text(&message)));
                    Delivery::new(message, attempt, Acker::new(sink.clone(), Token::new(token), None))
                })
            })))
        })
    }

    fn close(&self) -> OpFuture<'_> {
        OpFuture::ready(Ok(()))
    }
}

/// Runs `fut` with the generous timeout.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Polls `condition` until it holds, or panics after `TIMEOUT`. Works under paused tokio time too
/// (each poll lets virtual time advance).
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads the next `n` payloads of a subscription, acking each.
pub async fn take(sub: &mut Subscription, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let delivery = within("a delivery", sub.next()).await.expect("stream open").expect("no error");
        out.push(text(delivery.message()));
        delivery.ack().await.expect("ack");
    }
    out
}

/// A unique topic name per test.
pub fn topic(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}.{}.{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A name no other test or run uses (process id, clock and a counter): for topics, tables and
/// key prefixes on servers that outlive the test.
#[allow(dead_code)]
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!(
        "{prefix}{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts `router` in the background; returns its task once the router runs.
pub async fn start(router: &millstream::Router) -> tokio::task::JoinHandle<millstream::Result<()>> {
    let task = tokio::spawn({
        let router = router.clone();
        async move { router.run().await }
    });
    within("router running", router.running()).await;
    task
}

/// Shuts `router` down and waits for its task.
pub async fn stop(router: &millstream::Router, task: tokio::task::JoinHandle<millstream::Result<()>>) {
    router.shutdown();
    within("router stops", task).await.unwrap().unwrap();
}

/// The next message of `sub`, acked.
pub async fn next_message(sub: &mut Subscription) -> Message {
    let d = within("a message", sub.next()).await.unwrap().unwrap();
    let m = d.message().clone();
    d.ack().await.unwrap();
    m
}

/// A handler failing its first `failures` calls (`failure <n>`), counting calls in `calls`.
pub fn flaky(
    calls: Arc<std::sync::atomic::AtomicU32>,
    failures: u32,
) -> impl Fn(serde_json::Value) -> std::future::Ready<Result<(), millstream::Error>> + Clone {
    move |_| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        let result = if n <= failures { Err(millstream::Error::msg(format!("failure {n}"))) } else { Ok(()) };
        std::future::ready(result)
    }
}

/// The name libtest gives the test fn `name` of the module at `module_path` (its path without the
/// crate's name), to re-run one test of this binary in a child process.
pub fn test_name(module_path: &str, name: &str) -> String {
    match module_path.split_once("::") {
        Some((_, module)) => format!("{module}::{name}"),
        None => name.to_owned(),
    }
}
