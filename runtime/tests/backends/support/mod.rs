//! Helpers shared by the backend tests.

#[cfg(feature = "amqp")]
pub(crate) mod amqp;
#[cfg(all(
    unix,
    any(feature = "sqlite", all(feature = "conformance", any(feature = "redis", feature = "kafka")))
))]
pub(crate) mod child;
#[cfg(feature = "kafka")]
pub(crate) mod kafka;
#[cfg(feature = "mqtt")]
pub(crate) mod mqtt;
#[cfg(feature = "nats")]
pub(crate) mod nats;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod restart_lock;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub(crate) mod sql;
#[cfg(feature = "amqp")]
pub(crate) mod stall;
