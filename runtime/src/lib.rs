//! # millstream
//!
//! Message-driven services in Rust: what Go's Watermill does (pub/sub over many brokers, a router,
//! middleware) with handlers that are plain async functions whose payloads the compiler checks.
//!
//! ```
//! use millstream::{App, MemoryPubSub, Publishable, Route, State};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct OrderPlaced { id: u64, qty: u32 }
//!
//! #[derive(Serialize)]
//! struct InvoiceIssued { order_id: u64, cents: u64 }
//! impl Publishable for InvoiceIssued {}
//!
//! #[derive(Clone)]
//! struct Prices { cents_per_item: u64 }
//!
//! // The payload comes first; the return value is published to the handler's publish topic.
//! async fn bill(order: OrderPlaced, State(prices): State<Prices>) -> millstream::Result<InvoiceIssued> {
//!     Ok(InvoiceIssued { order_id: order.id, cents: u64::from(order.qty) * prices.cents_per_item })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
//! App::new()
//!     .pubsub(MemoryPubSub::new())
//!     .state(Prices { cents_per_item: 250 })
//!     .route(Route::new("bill", "orders.placed", bill).publish("invoices.issued"))
//!     .run_until(async { /* tokio::signal::ctrl_c() */ })
//!     .await
//! # }
//! ```
//!
//! [`App`] is the one builder (backends, state, layers, handlers); it makes the [`Router`], the
//! running handle (start, add handlers at run time, health, shutdown).
//!
//! The pieces: [`Message`] flows from a [`Subscriber`] through the [`Router`] (per-handler workers,
//! the [`middleware`](mod@middleware) chain, the typed [`Handler`]) to a [`Publisher`]; an input is acked only after
//! its outputs are published (at-least-once). [`MemoryPubSub`] is the embedded default backend.

//!
//! # How the crate is built: floors
//!
//! Imports run down, never up and never in a circle. From the ground up:
//!
//! 1. [`message`], [`error`](Error), [`keys`] (the metadata keys), `topic` (typed topics: [`Topic`]),
//!    `state`, `op` ([`OpFuture`](pubsub::OpFuture)), [`observe`] (metrics);
//! 2. [`codec`]; the [`pubsub`] traits and [`store`] traits, then one module per backend
//!    (backends never import each other);
//! 3. `context` (what a running handler knows about itself and its message);
//! 4. [`extract`] (handler arguments);
//! 5. [`handler`](mod@handler) (typed handlers and what they return);
//! 6. [`middleware`](mod@middleware);
//! 7. [`router`] (the running handle);
//! 8. [`registry`] (the link-time registry of `#[handler]` and `#[middleware]` fns);
//! 9. [`app`] (the one builder);
//! 10. [`testing`] and `conformance` (test support), and `__private`
//!     (what the macros' generated code calls).

#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc(hidden)]
#[path = "private/mod.rs"]
pub mod __private;
pub mod app;
pub mod asyncapi;
pub mod batch;
mod bus;
#[cfg(feature = "cli")]
pub mod cli;
pub mod registry;
mod reply;
mod request;
#[cfg(feature = "memory")]
pub mod testing;

pub mod codec;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod connect;
mod context;
pub mod delay;
pub mod docs_page;
mod error;
pub mod extract;
#[cfg(feature = "memory")]
pub mod fanout;
pub mod handler;
#[cfg(feature = "sql")]
pub mod inbox;
pub mod keys;
pub mod message;
pub mod middleware;
pub mod observe;
mod op;
pub mod pubsub;
pub mod router;
pub mod saga;
mod state;
pub mod store;
mod topic;
pub mod topology;
mod unit;

pub use bytes::Bytes;
/// Declarative handlers, typed topics and middleware: see the `millstream-macros` docs re-exported here.
pub use millstream_macros::{
    command, command_handler, event, event_handler, handler, middleware, saga, saga_handler, topic,
};
/// schemars, for `#[derive(JsonSchema)]` without a dependency of your own (`schema` feature).
#[cfg(feature = "schema")]
pub use schemars;

pub use crate::app::{App, PublishExt};
pub use crate::batch::{BatchHandler, BatchResult};
pub use crate::bus::{CommandBus, EventBus};
pub use crate::request::{RequestError, Requester};

pub use crate::codec::{Codec, JsonCodec};
pub use crate::connect::{connect, Backend};
pub use crate::delay::{MemoryDelayStore, Scheduler};
pub use crate::error::{Error, ErrorKind, Result};
pub use crate::extract::{Attempt, Ctx, FromMessage, Json, State};
pub use crate::handler::{
    Command, Delayed, Event, Handler, HandlerResult, MessageKind, MessageType, Outgoing, Outputs,
    Publishable, Topic,
};
#[cfg(feature = "sql")]
pub use crate::inbox::Tx;
pub use crate::message::{DeliveryInfo, DeliveryInfos, Message, MessageId, Metadata};
pub use crate::middleware::{Middleware, Next};
#[cfg(feature = "amqp")]
pub use crate::pubsub::amqp::{AmqpConfig, AmqpPubSub};
#[cfg(feature = "kafka")]
pub use crate::pubsub::kafka::{KafkaConfig, KafkaPubSub};
#[cfg(feature = "memory")]
pub use crate::pubsub::memory::{MemoryConfig, MemoryPubSub};
#[cfg(feature = "mqtt")]
pub use crate::pubsub::mqtt::{MqttConfig, MqttPubSub};
#[cfg(feature = "nats")]
pub use crate::pubsub::nats::{NatsConfig, NatsPubSub};
#[cfg(feature = "redis")]
pub use crate::pubsub::redis::{RedisConfig, RedisPubSub};
#[cfg(feature = "sqlite")]
pub use crate::pubsub::sql::SqlitePubSub;
#[cfg(feature = "sql")]
pub use crate::pubsub::sql::{
    SqlAttemptStore, SqlConfig, SqlDedupStore, SqlDelayStore, SqlInbox, SqlPubSub, SqlSagaStore,
};
pub use crate::pubsub::{Delivery, PubSub, Publisher, SubscribeOptions, Subscriber, Subscription};
pub use crate::router::{HandlerSummary, Health, Route, Router, RouterConfig, UnknownEvents};
pub use crate::saga::{Saga, Sagas};
pub use crate::state::StateMap;

/// The names most programs need: `use millstream::prelude::*;`.
pub mod prelude {
    #[cfg(feature = "memory")]
    pub use crate::MemoryPubSub;
    pub use crate::{App, HandlerResult, Next, PublishExt};
    pub use crate::{
        Attempt, BatchResult, Bytes, Command, CommandBus, Ctx, Delayed, DeliveryInfo, Error, Event, EventBus,
        Json, Message, MessageId, Metadata, Publishable, Publisher, Result, Route, Router, State, Subscriber,
        Topic,
    };
    pub use serde::{Deserialize, Serialize};
}
