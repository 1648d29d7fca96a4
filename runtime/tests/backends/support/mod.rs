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

/// Prints the library's logs, captured per test (shown for a failure): the filter in
/// `MILLSTREAM_TEST_LOG` (for example `millstream::pubsub::amqp=debug`), else the AMQP and Kafka
/// backends' warnings, so that a rare failure in CI says what was slow. Once per test process,
/// later calls do nothing.
#[cfg(all(feature = "conformance", any(feature = "amqp", feature = "kafka")))]
pub(crate) fn log() {
    let filter = std::env::var("MILLSTREAM_TEST_LOG")
        .unwrap_or_else(|_| "millstream::pubsub::amqp=warn,millstream::pubsub::kafka=warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}
