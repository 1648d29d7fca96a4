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

/// Prints the library's logs when `MILLSTREAM_TEST_LOG` holds a filter (for example
/// `millstream::pubsub::amqp=debug`); once per test process, later calls do nothing.
#[cfg(any(feature = "amqp", feature = "kafka"))]
pub(crate) fn log() {
    if let Ok(filter) = std::env::var("MILLSTREAM_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
