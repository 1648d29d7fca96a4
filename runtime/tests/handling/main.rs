//! Handlers end to end on the in-memory backend: the app builder, the router, the test app, tracing and metrics.
//!
//! One test binary per area (CI links a few binaries, not one per file); each file is a module.

mod app;
mod asyncapi;
mod batch;
#[path = "../common/mod.rs"]
mod common;
mod cqrs;
mod delay;
mod event_group;
mod metrics;
mod protobuf;
mod request;
mod retry_topics;
mod router;
mod saga;
mod testing;
mod tracing;
