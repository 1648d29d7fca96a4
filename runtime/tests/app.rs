//! `App`: handlers from the registry or listed by hand, and every start-up problem in one error.
//!
//! Each test selects its own handlers by module path prefix, so the handlers of other tests in
//! this binary (some deliberately broken) never leak in.

use std::sync::Arc;
use std::time::Duration;

use millstream::prelude::*;
use millstream::router::RouterConfig;
use millstream::{App, ErrorKind, HandlerResult, MemoryPubSub, Next, SubscribeOptions};
use parking_lot::Mutex;

const TIMEOUT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

mod billing {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::topic("app-test.orders")]
    pub(crate) struct OrderPlaced {
        pub(crate) id: u64,
        pub(crate) qty: u32,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[millstream::topic("app-test.invoices")]
    pub(crate) struct InvoiceIssued {
        pub(crate) order: u64,
        pub(crate) cents: u64,
    }

    #[derive(Clone)]
    pub(crate) struct Prices(pub(crate) u64);

    #[millstream::handler]
    pub(crate) async fn bill(order: OrderPlaced, State(prices): State<Prices>) -> Result<InvoiceIssued> {
        Ok(InvoiceIssued { order: order.id, cents: u64::from(order.qty) * prices.0 })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_handlers_run_with_state_and_typed_topics() {
    use billing::{InvoiceIssued, OrderPlaced, Prices};
    let pubsub = MemoryPubSub::new();
    let mut invoices =
        pubsub.subscribe(<InvoiceIssued as Topic>::NAME, SubscribeOptions::default()).await.unwrap();
    let app = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::billing")
        .pubsub(pubsub.clone())
        .state(Prices(250))
        .build()
        .unwrap();
    assert_eq!(app.handlers().len(), 1);
    let info = app.handlers()[0].clone();
    assert_eq!(info.name, "app::billing::bill");
    assert_eq!(info.topic, "app-test.orders");
    assert_eq!(info.group, "app::billing::bill", "the default group is the handler's name");
    assert_eq!(info.publish.as_deref(), Some("app-test.invoices"));
    let location = info.location.expect("a #[handler] fn has a location");
    assert!(location.file.ends_with("app.rs") && location.line > 0, "{location}");
    app.start().await.unwrap();
    pubsub.publish_value(&OrderPlaced { id: 7, qty: 3 }).await.unwrap();
    let delivery = within("an invoice", invoices.next()).await.unwrap().unwrap();
    assert_eq!(&delivery.message().payload()[..], br#"{"order":7,"cents":750}"#);
    app.shutdown();
    app.close().await.unwrap();
}

#[tokio::test]
async fn the_explicit_form_takes_the_handler_fn() {
    let app = App::new()
        .handler(billing::bill)
        .handler(billing::bill) // the same handler twice is one handler
        .pubsub(MemoryPubSub::new())
        .state(billing::Prices(1))
        .build()
        .unwrap();
    let names: Vec<_> = app.handlers().iter().map(|h| h.name.clone()).collect();
    assert_eq!(names, ["app::billing::bill"]);
}

#[tokio::test]
async fn a_fn_without_the_attribute_is_reported() {
    async fn plain(_: billing::OrderPlaced) {}
    let err = App::new().handler(plain).pubsub(MemoryPubSub::new()).build().unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("invalid configuration: `app::a_fn_without_the_attribute_is_reported::"),
        "{text}"
    );
    assert!(
        text.contains(
            "::plain` was added with `.handler(..)` but is not a registered `#[millstream::handler]` fn"
        ),
        "{text}"
    );
}

/// Handlers with every start-up problem at once.
mod broken {
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub(crate) struct Order {
        pub(crate) id: u64,
    }

    #[derive(Serialize, Deserialize)]
    pub(crate) struct Refund {
        pub(crate) id: u64,
    }

    #[derive(Clone)]
    pub(crate) struct Db;

    #[derive(Clone)]
    pub(crate) struct Clock;

    #[millstream::handler(topic = "app-test.broken.orders", name = "dup")]
    pub(crate) async fn first(_: Order, _: State<Db>) {}

    #[millstream::handler(topic = "app-test.broken.orders", name = "dup")]
    pub(crate) async fn second(_: Refund, _: State<Clock>) {}

    #[millstream::handler(topic = "app-test.broken.other", pubsub = "kafka")]
    pub(crate) async fn elsewhere(_: Order) {}

    #[millstream::handler(topic = "app-test.broken.third")]
    pub(crate) async fn third(_: Order, _: State<Db>) {}
}

#[tokio::test]
async fn build_lists_every_problem_in_one_error() {
    let err = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::broken")
        .pubsub(MemoryPubSub::new())
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let text = err.to_string();
    assert!(text.contains("5 problems"), "{text}");
    assert!(
        text.contains("two handlers are named `dup`: `app::broken::first` at runtime/tests/app.rs:"),
        "{text}"
    );
    assert!(text.contains("and `app::broken::second` at runtime/tests/app.rs:"), "{text}");
    assert!(
        text.contains(
            "topic `app-test.broken.orders` is read as two payload types: `Order` by handler `dup`"
        ),
        "{text}"
    );
    assert!(text.contains("and `Refund` by handler `dup`"), "{text}");
    assert!(text.contains("uses pub/sub `kafka`, which was not configured"), "{text}");
    // One line per missing state, naming every handler that uses it, with its location.
    let db = text.lines().find(|line| line.contains("State<app::broken::Db> is used but was never provided"));
    let db = db.unwrap_or_else(|| panic!("no line for the missing Db: {text}"));
    assert!(db.contains("handler `dup` (runtime/tests/app.rs:124)"), "{db}");
    assert!(db.contains("handler `app::broken::third` (runtime/tests/app.rs:"), "{db}");
    assert!(
        text.contains("State<app::broken::Clock> is used but was never provided; add it with `.state(value)`; used by handler `dup` (runtime/tests/app.rs:127)"),
        "{text}"
    );
}

#[tokio::test]
async fn no_handlers_and_no_pubsub_are_reported() {
    let err = App::from_registry().module_prefix("nowhere").build().unwrap_err();
    let text = err.to_string();
    assert!(text.contains("2 problems"), "{text}");
    assert!(text.contains("none of the"), "{text}");
    assert!(text.contains("matches the filters"), "{text}");
    assert!(text.contains("no pub/sub"), "{text}");

    let err = App::new().pubsub(MemoryPubSub::new()).build().unwrap_err();
    assert!(err.to_string().contains("the app has no handlers"), "{err}");
}

/// Two services in one binary, and a handler on a named pub/sub.
mod services {
    use super::*;

    #[millstream::handler(topic = "app-test.services.a", service = "alpha")]
    pub(crate) async fn alpha(_: Json<serde_json::Value>) {}

    #[millstream::handler(topic = "app-test.services.b", service = "beta", pubsub = "side")]
    pub(crate) async fn beta(raw: Bytes, ctx: Ctx) -> Result<()> {
        ctx.publish_to("app-test.services.b.echo", &serde_json::json!({ "len": raw.len() })).await
    }
}

#[tokio::test]
async fn service_tags_select_handlers() {
    let prefix = module_path!().to_owned() + "::services";
    let alpha = App::from_registry().module_prefix(&prefix).service("alpha").pubsub(MemoryPubSub::new());
    let names: Vec<_> = alpha.build().unwrap().handlers().iter().map(|h| h.name.clone()).collect();
    assert_eq!(names, ["app::services::alpha"]);
    let both = App::from_registry()
        .module_prefix(&prefix)
        .service("alpha")
        .service("beta")
        .pubsub(MemoryPubSub::new())
        .pubsub_named("side", MemoryPubSub::new());
    let names: Vec<_> = both.build().unwrap().handlers().iter().map(|h| h.name.clone()).collect();
    assert_eq!(names, ["app::services::alpha", "app::services::beta"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_pubsub_carries_its_handlers_messages() {
    let (default, side) = (MemoryPubSub::new(), MemoryPubSub::new());
    let mut echoes = side.subscribe("app-test.services.b.echo", SubscribeOptions::default()).await.unwrap();
    let app = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::services")
        .service("beta")
        .pubsub(default.clone())
        .pubsub_named("side", side.clone())
        .build()
        .unwrap();
    app.start().await.unwrap();
    // Published on the default backend: nobody reads it there.
    default.publish("app-test.services.b", Message::new("12345")).await.unwrap();
    side.publish("app-test.services.b", Message::new("123")).await.unwrap();
    let echo = within("an echo", echoes.next()).await.unwrap().unwrap();
    assert_eq!(&echo.message().payload()[..], br#"{"len":3}"#);
    app.shutdown();
    app.close().await.unwrap();
}

/// Router-wide middleware in priority order, and a per-handler one named in `middleware = [..]`.
mod layered {
    use super::*;

    pub(crate) static TRAIL: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

    #[millstream::middleware(priority = 1)]
    pub(crate) async fn inner(message: Message, next: Next) -> HandlerResult {
        TRAIL.lock().push("priority 1");
        next.run(message).await
    }

    #[millstream::middleware(priority = 10)]
    pub(crate) async fn outer(message: Message, next: Next) -> HandlerResult {
        TRAIL.lock().push("priority 10");
        next.run(message).await
    }

    #[millstream::middleware]
    pub(crate) async fn local(message: Message, next: Next) -> HandlerResult {
        TRAIL.lock().push("per handler");
        next.run(message).await
    }

    #[millstream::handler(topic = "app-test.layered", middleware = [local])]
    pub(crate) async fn handle(_: Bytes) {
        TRAIL.lock().push("handler");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_middleware_runs_by_priority_then_per_handler_layers() {
    let pubsub = MemoryPubSub::new();
    let done = Arc::new(tokio::sync::Notify::new());
    let signal = done.clone();
    let app = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::layered")
        .pubsub(pubsub.clone())
        .layer(millstream::middleware::from_fn(move |message: Message, next: Next| {
            let signal = signal.clone();
            async move {
                layered::TRAIL.lock().push("added by hand");
                let result = next.run(message).await;
                signal.notify_one();
                result
            }
        }))
        .build()
        .unwrap();
    app.start().await.unwrap();
    pubsub.publish("app-test.layered", Message::new("x")).await.unwrap();
    within("handled", done.notified()).await;
    assert_eq!(
        *layered::TRAIL.lock(),
        ["priority 10", "priority 1", "added by hand", "per handler", "handler"]
    );
    app.shutdown();
    app.close().await.unwrap();
}

/// Options from the attribute reach the route.
mod tuned {
    use super::*;

    #[millstream::handler(
        topic = "app-test.tuned",
        group = "workers",
        concurrency = 4,
        publish = "app-test.tuned.out"
    )]
    pub(crate) async fn tuned(value: u64) -> Json<u64> {
        Json(value + 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_options_configure_the_route() {
    let pubsub = MemoryPubSub::new();
    let mut config = RouterConfig::default();
    config.close_timeout = Duration::from_secs(5);
    let app = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::tuned")
        .pubsub(pubsub.clone())
        .config(config)
        .build()
        .unwrap();
    let info = app.handlers()[0].clone();
    assert_eq!(
        (info.group.as_str(), info.concurrency, info.publish.as_deref()),
        ("workers", 4, Some("app-test.tuned.out"))
    );
    let mut out = pubsub.subscribe("app-test.tuned.out", SubscribeOptions::default()).await.unwrap();
    app.start().await.unwrap();
    // The consumer group is "workers": a second subscription in it shares the messages.
    pubsub.publish("app-test.tuned", Message::new("41")).await.unwrap();
    let reply = within("a reply", out.next()).await.unwrap().unwrap();
    assert_eq!(&reply.message().payload()[..], b"42");
    let health = app.health();
    assert_eq!(health.handlers, [("app::tuned::tuned".to_owned(), true)]);
    app.shutdown();
    app.close().await.unwrap();
}

/// Built-in layers named in `middleware = [..]` (they run fused) around a macro handler.
mod guarded {
    use super::*;
    use millstream::middleware::{poison, retry, CorrelationId, Recoverer};
    use std::sync::atomic::{AtomicU32, Ordering};

    pub(crate) static CALLS: AtomicU32 = AtomicU32::new(0);

    #[millstream::handler(
        topic = "app-test.guarded",
        publish = "app-test.guarded.out",
        middleware = [CorrelationId, poison("app-test.guarded.dead"), retry(2), Recoverer]
    )]
    pub(crate) async fn handle(value: u64) -> Result<Json<u64>, millstream::Error> {
        let call = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
        match value {
            // Panics on its first call: the recoverer makes it an error, the retry runs it again.
            1 if call == 1 => panic!("first call"),
            1 => Ok(Json(10)),
            // Always fails: retried twice, then poisoned.
            _ => Err(millstream::Error::msg("never works")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_layers_named_in_the_attribute_guard_the_handler() {
    use millstream::middleware::CORRELATION_ID;
    use millstream::router::poison_keys;

    let pubsub = MemoryPubSub::new();
    let mut out = pubsub.subscribe("app-test.guarded.out", SubscribeOptions::default()).await.unwrap();
    let mut dead = pubsub.subscribe("app-test.guarded.dead", SubscribeOptions::default()).await.unwrap();
    let app = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::guarded")
        .pubsub(pubsub.clone())
        .build()
        .unwrap();
    app.start().await.unwrap();

    let recovered = Message::new("1");
    pubsub.publish("app-test.guarded", recovered.clone()).await.unwrap();
    let output = within("an output", out.next()).await.unwrap().unwrap();
    assert_eq!(&output.message().payload()[..], b"10");
    let root = recovered.id().to_string();
    assert_eq!(output.message().metadata().get(CORRELATION_ID), Some(root.as_str()));

    pubsub.publish("app-test.guarded", Message::new("2")).await.unwrap();
    let poisoned = within("a dead letter", dead.next()).await.unwrap().unwrap();
    assert_eq!(&poisoned.message().payload()[..], b"2");
    let reason = poisoned.message().metadata().get(poison_keys::REASON);
    assert_eq!(reason, Some("never works"));
    // 2 calls for the first message, 3 (one and two retries) for the second.
    assert_eq!(guarded::CALLS.load(std::sync::atomic::Ordering::SeqCst), 5);
    app.shutdown();
    app.close().await.unwrap();
}

#[tokio::test]
async fn expected_handlers_that_are_missing_fail_the_build() {
    let err = App::new()
        .handler(billing::bill)
        .expect_handlers(["app::billing::bill", "shop::audit"])
        .pubsub(MemoryPubSub::new())
        .state(billing::Prices(1))
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("expected handler `shop::audit` is not in the app"), "{text}");
    assert!(text.contains(r#"(it has ["app::billing::bill"])"#), "{text}");
    assert!(text.contains("use that_crate as _;"), "{text}");
    assert!(!text.contains("`app::billing::bill` is not"), "{text}");
    App::new()
        .handler(billing::bill)
        .expect_handlers(["app::billing::bill"])
        .pubsub(MemoryPubSub::new())
        .state(billing::Prices(1))
        .build()
        .expect("every expected handler is there");
}

#[test]
fn handler_info_shows_the_effective_group() {
    let info = millstream::registry::handlers()
        .iter()
        .find(|d| d.info().name == "app::billing::bill")
        .expect("registered")
        .info();
    assert_eq!(info.group, None, "no `group` key");
    assert_eq!(info.effective_group(), "app::billing::bill");
    let debug = format!("{info:?}");
    assert!(debug.contains(r#"group: "app::billing::bill""#), "{debug}");
    assert!(debug.contains("location: runtime/tests/app.rs:"), "{debug}");
}
