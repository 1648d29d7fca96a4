//! Middleware: code that wraps every handler call, router-wide or per handler.
//!
//! A middleware receives the message and [`Next`], the rest of the chain; it may change the message,
//! call `next.run(message)` (or not, or several times), and inspect or change the outputs. Layers
//! added first are called first (outermost). [`from_fn`] turns an async fn into a middleware:
//!
//! ```
//! use millstream::middleware::{from_fn, Next};
//! use millstream::{HandlerResult, Message};
//!
//! async fn timing(message: Message, next: Next) -> HandlerResult {
//!     let started = std::time::Instant::now();
//!     let result = next.run(message).await;
//!     tracing::debug!(elapsed = ?started.elapsed(), "handled");
//!     result
//! }
//!
//! let layer = from_fn(timing);
//! # let _ = layer;
//! ```
//!
//! The built-in layers (retry, poison queue, timeout, correlation id, ...) each live in a file of
//! their own. Consecutive built-in layers run fused, as one future (see `engine.rs`); any other
//! middleware costs one boxed future and one virtual call per message. The guide
//! `docs/middleware.md` in the repository says how to write one and what it costs.

// The chain and the engine, from the bottom: what a built-in layer tells the engine, the engine
// that runs built-in layers fused, then the trait, `Next` and the chain that tie them together.
mod chain;
mod engine;
mod from_fn;
mod step;

// The built-in layers run by the engine, one file each.
mod correlation;
mod delay_on_nack;
mod ignore_errors;
mod instant_ack;
mod poison;
mod recoverer;
mod redelivery_cap;
mod retry;
mod timeout;

// Other layers (plain middleware).
mod breaker;
mod chaos;
mod count_attempts;
mod dedup;
mod message_type;
mod throttle;
mod trace;

// Interop.
#[cfg(feature = "tower")]
pub mod tower;

#[cfg(test)]
mod differential;

pub use self::breaker::{BreakerState, CircuitBreaker};
pub(crate) use self::chain::{call_slot, layer_facts, CallSlot, Chain, Endpoint};
pub use self::chain::{Middleware, Next};
pub use self::chaos::{RandomFail, RandomPanic};
pub use self::correlation::CorrelationId;
pub use self::count_attempts::{AttemptStore, CountAttempts, MemoryAttemptStore};
pub use self::dedup::{DedupKey, DedupStore, Deduplicator, MemoryDedupStore};
pub use self::delay_on_nack::DelayOnNack;
pub use self::from_fn::{from_fn, FromFn};
pub use self::ignore_errors::IgnoreErrors;
pub use self::instant_ack::InstantAck;
pub use self::message_type::MessageTypeFilter;
pub use self::poison::{poison, poisoned, PoisonQueue};
pub use self::recoverer::Recoverer;
pub use self::redelivery_cap::RedeliveryCap;
pub use self::retry::{retry, Retry, RetryEvent};
pub use self::throttle::Throttle;
pub use self::timeout::{timeout, Timeout};
pub use self::trace::{TraceContext, TraceParent};
/// The metadata keys of the correlation and trace layers (defined in [`keys`](crate::keys)).
pub use crate::keys::{CORRELATION_ID, TRACEPARENT};
#[cfg(feature = "redis")]
pub use crate::pubsub::redis::{RedisAttemptStore, RedisDedupStore};
/// The boxed future a [`Middleware::call`] returns (`Pin<Box<dyn Future<Output = T> + Send + 'a>>`).
pub use futures_core::future::BoxFuture;
