//! One span per message with handler, topic, message id and attempt; structured error events.

mod common;

use std::io::Write;
use std::sync::Arc;

use common::{topic, within};
use millstream::App;
use millstream::{Attempt, Error, MemoryPubSub, Message, Publisher, Route};
use parking_lot::Mutex;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

// A current-thread runtime, so that the thread-local subscriber sees the router's tasks.
#[tokio::test]
async fn failures_are_logged_inside_the_message_span() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let pubsub = MemoryPubSub::new();
    let input = topic("traced");
    let done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let done = done.clone();
        move |_: serde_json::Value, Attempt(attempt): Attempt| {
            let done = done.clone();
            async move {
                if attempt == 1 {
                    return Err(Error::msg("inventory service unavailable"));
                }
                done.notify_one();
                Ok(())
            }
        }
    };
    let router =
        App::new().pubsub(pubsub.clone()).route(Route::new("trace-h", &input, handler)).build().unwrap();
    router.start().await.unwrap();
    let message = Message::new("{}").with_header("correlation_id", "c-42");
    let id = message.id();
    pubsub.publish(&input, message).await.unwrap();
    within("second attempt succeeds", done.notified()).await;
    router.close().await.unwrap();

    let text = capture.text();
    let failure = text
        .lines()
        .find(|l| l.contains("handler failed; nacking"))
        .unwrap_or_else(|| panic!("no failure event in:\n{text}"));
    assert!(failure.contains("WARN"), "{failure}");
    assert!(
        failure.contains(&format!(
            "millstream.handle{{handler=trace-h topic={input} message_id={id} correlation_id=c-42 attempt=1}}"
        )),
        "{failure}"
    );
    assert!(failure.contains("error=inventory service unavailable"), "{failure}");
    assert!(failure.contains("kind=Handler"), "{failure}");
    assert!(text.contains("router running"), "{text}");
    assert!(text.contains("router stopped"), "{text}");
}

#[millstream::handler(topic = "tracing-test.startup", group = "loggers")]
async fn logged(_: serde_json::Value) {}

#[tokio::test]
async fn start_logs_every_handler_with_its_settings_and_location() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    async fn by_hand(_: Message) {}
    let hand_topic = topic("startup.hand");
    let router = App::new()
        .handler(logged)
        .route(Route::new("by-hand", &hand_topic, by_hand))
        .pubsub(MemoryPubSub::new())
        .start()
        .await
        .unwrap();
    router.shutdown();
    router.close().await.unwrap();

    let text = capture.text();
    let line = |name: &str| {
        text.lines()
            .find(|l| l.contains("handler running") && l.contains(name))
            .unwrap_or_else(|| panic!("no start-up line for {name} in:\n{text}"))
            .to_owned()
    };
    let logged = line("tracing::logged");
    assert!(logged.contains(" INFO "), "{logged}");
    assert!(
        logged.contains(
            "`tracing::logged` reads `tracing-test.startup` in group `loggers` (runtime/tests/tracing.rs:"
        ),
        "{logged}"
    );
    let by_hand = line("by-hand");
    assert!(
        by_hand.contains(&format!("`by-hand` reads `{hand_topic}` in group `by-hand` (a hand-made `Route`)")),
        "{by_hand}"
    );
}
