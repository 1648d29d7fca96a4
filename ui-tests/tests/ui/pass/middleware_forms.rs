//! `#[middleware]` with and without a priority, and every key.
use millstream::prelude::*;

#[millstream::middleware]
async fn by_name_only(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

#[millstream::middleware(priority = 10)]
async fn router_wide(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

#[millstream::middleware(priority = -3, name = "observability.timing", service = "billing", crate = ::millstream)]
async fn every_key(message: Message, next: Next) -> millstream::HandlerResult {
    let started = std::time::Instant::now();
    let result = next.run(message).await;
    let _elapsed = started.elapsed();
    result
}

fn main() {
    let table: Vec<_> =
        millstream::registry::middleware().iter().map(|m| (m.info().name, m.info().priority)).collect();
    assert_eq!(
        table,
        [
            (concat!(module_path!(), "::router_wide"), Some(10)),
            ("observability.timing", Some(-3)),
            (concat!(module_path!(), "::by_name_only"), None)
        ]
    );
}
