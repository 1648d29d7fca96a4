//! `#[millstream::middleware]`: router-wide by priority, or per handler by name.
//!
//! Run: `cargo run -p millstream-examples --bin macro_middleware`

use std::sync::Arc;
use std::time::Instant;

use millstream::prelude::*;

/// Router-wide (it has a priority): every handler of `App::from_registry()` runs through it.
/// Higher priorities run first, outermost.
#[millstream::middleware(priority = 100)]
async fn timing(message: Message, next: Next) -> HandlerResult {
    let started = Instant::now();
    let handler = next.handler_name().to_owned();
    let result = next.run(message).await;
    println!("[timing] {handler} took {:?}", started.elapsed());
    result
}

/// Router-wide too, inside `timing`.
#[millstream::middleware(priority = 10)]
async fn log_errors(message: Message, next: Next) -> HandlerResult {
    let id = message.id();
    let result = next.run(message).await;
    if let Err(error) = &result {
        println!("[log_errors] message {id} failed: {error}");
    }
    result
}

/// No priority: runs only where a handler names it.
#[millstream::middleware]
async fn require_tenant(message: Message, next: Next) -> HandlerResult {
    if message.metadata().get("tenant").is_none() {
        return Err(Error::permanent("no tenant header"));
    }
    next.run(message).await
}

#[derive(Clone)]
struct Done(Arc<tokio::sync::Semaphore>);

#[millstream::handler(topic = "greetings", middleware = [require_tenant])]
async fn greet(name: String, meta: Metadata, State(done): State<Done>) {
    println!("[greet] hello {name} from tenant {}", meta.get("tenant").unwrap_or("?"));
    done.0.add_permits(1);
}

#[tokio::main]
async fn main() -> millstream::Result<()> {
    let pubsub = MemoryPubSub::new();
    let done = Done(Arc::new(tokio::sync::Semaphore::new(0)));
    let mut poisoned = pubsub.subscribe("millstream.poison", Default::default()).await?;
    let app = App::from_registry().pubsub(pubsub.clone()).state(done.clone()).build()?;
    app.start().await?;

    pubsub.publish("greetings", Message::new(r#""ada""#).with_header("tenant", "acme")).await?;
    let _ = done.0.acquire().await.expect("greeted");
    // Without a tenant: `require_tenant` rejects it, and it goes to the poison topic.
    pubsub.publish("greetings", Message::new(r#""bob""#)).await?;
    let rejected = poisoned.next().await.expect("a poisoned message")?;
    println!("poisoned: {:?}", rejected.message().metadata().get("millstream.poison.reason"));
    rejected.ack().await?;

    app.shutdown();
    app.close().await
}
