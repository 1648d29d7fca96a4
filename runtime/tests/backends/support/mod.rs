//! Helpers shared by the backend tests.

#[cfg(feature = "mqtt")]
pub(crate) mod mqtt;
#[cfg(feature = "nats")]
pub(crate) mod nats;
#[cfg(all(feature = "conformance", any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
pub(crate) mod sql;
