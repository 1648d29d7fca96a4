//! The fused engine against the layers nested one by one.
//!
//! Every ordering of up to four of eight built-in layers runs around a scripted handler (that
//! succeeds, fails, panics, hangs past a timeout or fails permanently), once fused (the layers
//! consecutive, one segment) and once separated by identity `from_fn` layers (each built-in a
//! segment of its own, the rest of the chain reached through `Next`): the outcome must be the
//! same. The outcome is the result (outputs with their metadata, or the error's kind, text,
//! permanence and redelivery hint, or the panic), the attempts the handler saw, what was
//! published to the poison topic, and how long it took on tokio's paused clock.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Once};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_util::FutureExt;
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::chain::{layer_facts, Chain, Endpoint, Middleware, Next};
use super::{
    from_fn, CorrelationId, DelayOnNack, IgnoreErrors, PoisonQueue, Recoverer, RedeliveryCap, Retry, Timeout,
};
use crate::codec::JsonCodec;
use crate::context::{MessageCx, RouteInfo};
use crate::error::{Error, ErrorKind};
use crate::handler::{HandlerResult, Outgoing, Outputs};
use crate::keys::{poison as poison_keys, CORRELATION_ID};
use crate::message::Message;
use crate::op::OpFuture;
use crate::pubsub::Publisher;

/// What the handler does on its `n`-th call (1-based).
#[derive(Clone, Copy, Debug)]
enum Script {
    Succeed,
    /// Fails (transiently) on the first `k` calls, then succeeds.
    FailTimes(u32),
    PanicOnce,
    AlwaysPanic,
    /// The first call hangs far past every timeout, the next ones succeed.
    HangOnce,
    /// Waits this many milliseconds, then fails: with 60, a timeout of 100 ms around a retry
    /// cuts the second attempt; with 95, it passes during the backoff.
    SlowFail(u64),
    Permanent,
    /// Fails with an error that already asks for a redelivery delay.
    FailWithHint,
}

const SCRIPTS: [Script; 10] = [
    Script::Succeed,
    Script::FailTimes(1),
    Script::FailTimes(5),
    Script::PanicOnce,
    Script::AlwaysPanic,
    Script::HangOnce,
    Script::SlowFail(60),
    Script::SlowFail(95),
    Script::Permanent,
    Script::FailWithHint,
];

/// The layers the orderings are drawn from. The retry has a deadline of its own per attempt
/// (equal to the timeout's, so that ties are tried) and a limit on the elapsed time.
fn layers() -> Vec<(&'static str, Arc<dyn Middleware>)> {
    let retry = Retry::new(2)
        .initial_interval(Duration::from_millis(10))
        .jitter(0.0)
        .attempt_timeout(Duration::from_millis(100))
        .max_elapsed(Duration::from_millis(150));
    vec![
        ("retry", Arc::new(retry)),
        ("timeout", Arc::new(Timeout::new(Duration::from_millis(100)))),
        ("recoverer", Arc::new(Recoverer)),
        ("poison", Arc::new(PoisonQueue::new("poison"))),
        ("correlation", Arc::new(CorrelationId)),
        ("ignore", Arc::new(IgnoreErrors::kinds([ErrorKind::Timeout]))),
        ("cap", Arc::new(RedeliveryCap::new(2))),
        ("delay", Arc::new(DelayOnNack::new(Duration::from_secs(1), Duration::from_secs(10)))),
    ]
}

/// The scripted handler; records the attempt of each call.
struct Scripted {
    script: Script,
    attempts: Mutex<Vec<u32>>,
}

impl Scripted {
    fn act(&self, attempt: u32) -> BoxFuture<'static, HandlerResult> {
        let n = {
            let mut attempts = self.attempts.lock();
            attempts.push(attempt);
            attempts.len() as u32
        };
        let script = self.script;
        Box::pin(async move {
            let outputs = || {
                let plain = Message::new(format!("out {n}")).with_header("n", n.to_string());
                let preset = Message::new("preset").with_static_header(CORRELATION_ID, "preset");
                let mut outputs = Outputs::new();
                outputs.push(Outgoing { topic: None, message: plain });
                outputs.push(Outgoing { topic: Some("elsewhere".into()), message: preset });
                Ok(outputs)
            };
            // Every call waits once, like a handler that does some I/O.
            tokio::task::yield_now().await;
            match script {
                Script::Succeed => outputs(),
                Script::FailTimes(k) if n <= k => Err(Error::msg(format!("failure {n}"))),
                Script::FailTimes(_) => outputs(),
                Script::PanicOnce | Script::AlwaysPanic
                    if n == 1 || matches!(script, Script::AlwaysPanic) =>
                {
                    panic!("scripted panic {n}")
                }
                Script::PanicOnce | Script::AlwaysPanic => outputs(),
                Script::HangOnce if n == 1 => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    outputs()
                }
                Script::HangOnce => outputs(),
                Script::SlowFail(millis) => {
                    tokio::time::sleep(Duration::from_millis(millis)).await;
                    Err(Error::msg(format!("slow failure {n}")))
                }
                Script::Permanent => Err(Error::permanent("bad input")),
                Script::FailWithHint => Err(Error::msg("busy").retry_after(Duration::from_secs(5))),
            }
        })
    }
}

impl Endpoint for Scripted {
    fn call<'a>(&'a self, _: Message, cx: MessageCx<'a>) -> BoxFuture<'a, HandlerResult> {
        self.act(cx.attempt)
    }

    fn call_owned(
        self: Arc<Self>,
        _: Arc<Chain>,
        _: Message,
        attempt: u32,
    ) -> BoxFuture<'static, HandlerResult> {
        self.act(attempt)
    }
}

/// A custom layer that panics before it returns a future.
struct PanicsInCall;

impl Middleware for PanicsInCall {
    fn call(&self, _: Message, _: Next) -> BoxFuture<'static, HandlerResult> {
        panic!("scripted panic in a layer's call")
    }
}

/// Records what is published.
#[derive(Default)]
struct Recorder {
    published: Mutex<Vec<(String, Message)>>,
}

impl Publisher for Recorder {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        self.published.lock().push((topic.to_owned(), message));
        OpFuture::ready(Ok(()))
    }

    fn close(&self) -> OpFuture<'_> {
        OpFuture::ready(Ok(()))
    }
}

/// Metadata entries, sorted.
type Entries = Vec<(String, String)>;

/// What a run did, in comparable form.
#[derive(Debug, PartialEq)]
struct Outcome {
    result: Ended,
    attempts: Vec<u32>,
    /// `(topic, payload, metadata)` of each publish, without the poison time.
    published: Vec<(String, String, Entries)>,
    elapsed: Duration,
}

#[derive(Debug, PartialEq)]
enum Ended {
    /// `(topic, payload, metadata)` of each output.
    Ok(Vec<(Option<String>, String, Entries)>),
    Err {
        kind: ErrorKind,
        text: String,
        permanent: bool,
        retry_after: Option<Duration>,
    },
    Panicked(String),
}

fn metadata(message: &Message) -> Entries {
    let mut entries: Vec<_> = message
        .metadata()
        .iter()
        .filter(|(key, _)| *key != poison_keys::TIME)
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    entries.sort();
    entries
}

fn payload(message: &Message) -> String {
    String::from_utf8_lossy(message.payload()).into_owned()
}

/// Runs `input` (delivery `attempt`) through `middleware` around a handler following `script`.
async fn run(middleware: Vec<Arc<dyn Middleware>>, script: Script, input: &Message, attempt: u32) -> Outcome {
    let publisher = Arc::new(Recorder::default());
    let route = Arc::new(RouteInfo {
        name: "scripted".into(),
        handler: "scripted".into(),
        group: "scripted".into(),
        topic: "input".into(),
        publish: None,
        publisher: publisher.clone(),
        encoder: Arc::new(JsonCodec),
        shutdown: CancellationToken::new(),
        correlates: layer_facts(&middleware).correlates,
    });
    let handler = Arc::new(Scripted { script, attempts: Mutex::new(Vec::new()) });
    let chain = Arc::new(Chain::new(middleware, handler.clone(), route));
    let started = Instant::now();
    // As the router calls a chain: borrowing a copy of the message it keeps anyway when the
    // chain starts fused.
    let call = if chain.starts_fused() {
        chain.call_fused(input.clone(), input, attempt)
    } else {
        chain.call(input.clone(), attempt)
    };
    let result = match AssertUnwindSafe(call).catch_unwind().await {
        Ok(Ok(outputs)) => Ended::Ok(
            outputs
                .iter()
                .map(|output| {
                    (
                        output.topic.as_deref().map(str::to_owned),
                        payload(&output.message),
                        metadata(&output.message),
                    )
                })
                .collect(),
        ),
        Ok(Err(error)) => Ended::Err {
            kind: error.kind(),
            text: error.to_string(),
            permanent: error.is_permanent(),
            retry_after: error.retry_after_hint(),
        },
        Err(panic) => Ended::Panicked(crate::error::panic_text(&*panic)),
    };
    let elapsed = started.elapsed();
    let attempts = handler.attempts.lock().clone();
    let published = publisher
        .published
        .lock()
        .iter()
        .map(|(topic, m)| (topic.clone(), payload(m), metadata(m)))
        .collect();
    Outcome { result, attempts, published, elapsed }
}

/// Every ordering of `k` distinct items of `0..n`.
fn orderings(n: usize, k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for shorter in orderings(n, k - 1) {
        for next in (0..n).filter(|i| !shorter.contains(i)) {
            let mut ordering = shorter.clone();
            ordering.push(next);
            all.push(ordering);
        }
    }
    all
}

/// The scripted panics would print thousands of messages: keep them quiet, and only them.
fn quiet_scripted_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let text = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or(payload.downcast_ref::<&str>().copied());
            let scripted = text.is_some_and(|text| text.starts_with("scripted panic"));
            if !scripted {
                default(info);
            }
        }));
    });
}

#[tokio::test(start_paused = true)]
async fn fused_runs_behave_like_the_layers_nested_one_by_one() {
    quiet_scripted_panics();
    let layers = layers();
    let identity =
        || -> Arc<dyn Middleware> { Arc::new(from_fn(|message: Message, next: Next| next.run(message))) };
    let input = Message::new("in");
    let mut cases = 0;
    let mut differences = Vec::new();
    for k in 1..=4 {
        for ordering in orderings(layers.len(), k) {
            let fused: Vec<_> = ordering.iter().map(|&i| layers[i].1.clone()).collect();
            let mut separated = Vec::new();
            for &i in &ordering {
                if !separated.is_empty() {
                    separated.push(identity());
                }
                separated.push(layers[i].1.clone());
            }
            for script in SCRIPTS {
                for attempt in [1, 2] {
                    let one = run(fused.clone(), script, &input, attempt).await;
                    let other = run(separated.clone(), script, &input, attempt).await;
                    cases += 1;
                    if one != other {
                        let names: Vec<_> = ordering.iter().map(|&i| layers[i].0).collect();
                        differences.push(format!(
                            "{names:?}, {script:?}, delivery {attempt}:\n  fused:     {one:?}\n  separated: {other:?}"
                        ));
                    }
                }
            }
        }
    }
    assert_eq!(cases, 2080 * SCRIPTS.len() * 2);
    assert!(
        differences.is_empty(),
        "{} of {cases} cases differ:\n{}",
        differences.len(),
        differences[..differences.len().min(10)].join("\n")
    );
}

/// The differential test above would pass if both ways ran the layers wrongly in the same way:
/// these pin a few outcomes of the nesting down.
#[tokio::test(start_paused = true)]
async fn nested_layers_give_the_documented_outcomes() {
    quiet_scripted_panics();
    let input = Message::new("in");
    let layers = layers();
    let pick = |names: &[&str]| -> Vec<Arc<dyn Middleware>> {
        names.iter().map(|name| layers.iter().find(|(n, _)| n == name).expect("a layer").1.clone()).collect()
    };

    // A retry inside a poison queue: two retries, then the last failure is poisoned and acked.
    let outcome = run(pick(&["poison", "retry"]), Script::FailTimes(5), &input, 1).await;
    assert_eq!(outcome.attempts, [1, 2, 3]);
    assert_eq!(outcome.result, Ended::Ok(Vec::new()));
    assert_eq!(outcome.published.len(), 1);
    let (topic, _, metadata) = &outcome.published[0];
    assert_eq!(topic, "poison");
    assert!(metadata.contains(&(poison_keys::REASON.to_owned(), "failure 3".to_owned())), "{metadata:?}");
    assert!(metadata.contains(&(poison_keys::ATTEMPT.to_owned(), "1".to_owned())), "{metadata:?}");
    assert_eq!(outcome.elapsed, Duration::from_millis(10 + 20));

    // A timeout around a retry covers the attempts and the backoff together: 60 ms + 10 ms, then
    // the second attempt is cut at 100 ms.
    let outcome = run(pick(&["timeout", "retry"]), Script::SlowFail(60), &input, 1).await;
    assert_eq!(outcome.attempts, [1, 2]);
    assert!(matches!(&outcome.result, Ended::Err { kind: ErrorKind::Timeout, .. }), "{:?}", outcome.result);
    assert_eq!(outcome.elapsed, Duration::from_millis(100));

    // Inside the retry, each attempt gets its own timeout: the hang is cut, the retry succeeds.
    let outcome = run(pick(&["retry", "timeout"]), Script::HangOnce, &input, 1).await;
    assert_eq!(outcome.attempts, [1, 2]);
    assert!(matches!(&outcome.result, Ended::Ok(outputs) if outputs.len() == 2), "{:?}", outcome.result);
    assert_eq!(outcome.elapsed, Duration::from_millis(110));

    // A recoverer inside a retry makes a panic retryable; outside it, the panic escapes the retry.
    let outcome = run(pick(&["retry", "recoverer"]), Script::PanicOnce, &input, 1).await;
    assert_eq!(outcome.attempts, [1, 2]);
    assert!(matches!(outcome.result, Ended::Ok(_)));
    let outcome = run(pick(&["recoverer", "retry"]), Script::PanicOnce, &input, 1).await;
    assert_eq!(outcome.attempts, [1]);
    assert_eq!(
        outcome.result,
        Ended::Err {
            kind: ErrorKind::Panic,
            text: "handler panicked: scripted panic 1".into(),
            permanent: false,
            retry_after: None
        }
    );

    // A recoverer catches a panic in a layer inside it, even one before that layer's future.
    let mut layers_with_panic = pick(&["retry", "recoverer"]);
    layers_with_panic.push(Arc::new(PanicsInCall));
    let outcome = run(layers_with_panic, Script::Succeed, &input, 1).await;
    assert!(outcome.attempts.is_empty());
    assert!(
        matches!(&outcome.result, Ended::Err { kind: ErrorKind::Panic, text, .. } if text.ends_with("scripted panic in a layer's call")),
        "{:?}",
        outcome.result
    );
    assert_eq!(outcome.elapsed, Duration::from_millis(30), "retried twice");

    // The cap counts the retries inside which it sits as deliveries, and refuses permanently.
    let outcome = run(pick(&["retry", "cap"]), Script::FailTimes(5), &input, 2).await;
    assert_eq!(outcome.attempts, [2]);
    assert!(
        matches!(&outcome.result, Ended::Err { permanent: true, text, .. } if text == "delivered 3 times, more than the cap of 2"),
        "{:?}",
        outcome.result
    );

    // The correlation id: the input's own id on outputs without one; a preset one is kept.
    let outcome = run(pick(&["correlation"]), Script::Succeed, &input, 1).await;
    let Ended::Ok(outputs) = &outcome.result else { panic!("{:?}", outcome.result) };
    let id = input.id().to_string();
    assert!(outputs[0].2.contains(&(CORRELATION_ID.to_owned(), id)), "{outputs:?}");
    assert!(outputs[1].2.contains(&(CORRELATION_ID.to_owned(), "preset".to_owned())), "{outputs:?}");

    // The redelivery delay: by attempt, unless the error asks for its own.
    let outcome = run(pick(&["delay"]), Script::FailTimes(1), &input, 2).await;
    assert!(matches!(outcome.result, Ended::Err { retry_after: Some(d), .. } if d == Duration::from_secs(2)));
    let outcome = run(pick(&["delay"]), Script::FailWithHint, &input, 2).await;
    assert!(matches!(outcome.result, Ended::Err { retry_after: Some(d), .. } if d == Duration::from_secs(5)));
}
