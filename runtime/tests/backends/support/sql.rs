//! The networked SQL servers' addresses, and (with `conformance`) the conformance harness for
//! the networked SQL backends (PostgreSQL, MariaDB / MySQL).
#![allow(dead_code)]

#[cfg(feature = "conformance")]
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "conformance")]
use millstream::conformance::{BoxFuture, Harness};
#[cfg(feature = "conformance")]
use millstream::pubsub::PubSub;
use millstream::SqlConfig;
#[cfg(feature = "conformance")]
use millstream::SqlPubSub;

/// Tables shared by every case (topics are unique per case and run).
pub(crate) const PREFIX: &str = "msconf_";

pub(crate) fn url(name: &str) -> String {
    match name {
        "postgres" => std::env::var("MILLSTREAM_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
        _ => std::env::var("MILLSTREAM_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned()),
    }
}

/// Small pools (many cases run at once) and a short ack deadline (a vanished consumer's messages
/// are handed over quickly).
pub(crate) fn config() -> SqlConfig {
    SqlConfig::default()
        .table_prefix(PREFIX)
        .ack_deadline(Duration::from_secs(3))
        // Heartbeats stop after 1 s: a slow handler's message then comes back at the deadline
        // (the suite's `slow_handler_past_the_deadline`; `sql_faults` tests the heartbeat).
        .max_hold(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(20))
        .max_connections(3)
}

#[cfg(feature = "conformance")]
pub(crate) struct SqlHarness {
    pub(crate) name: &'static str,
    /// `SqlConfig::partitions` of every connection.
    pub(crate) partitions: u32,
}

#[cfg(feature = "conformance")]
impl Harness for SqlHarness {
    fn ack_deadline(&self) -> Option<Duration> {
        Some(Duration::from_secs(3))
    }

    fn name(&self) -> &str {
        self.name
    }

    fn connect(&self) -> BoxFuture<'_, millstream::Result<Arc<dyn PubSub>>> {
        Box::pin(async move {
            let config = config().partitions(self.partitions);
            Ok(Arc::new(SqlPubSub::connect(&url(self.name), config).await?) as Arc<dyn PubSub>)
        })
    }

    /// Deletes the case's rows: the database is shared and outlives the run.
    fn cleanup<'a>(&'a self, topics: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Ok(pubsub) = SqlPubSub::connect(&url(self.name), config()).await else { return };
            if let Err(error) = pubsub.delete_topics(topics).await {
                eprintln!("cleanup of {topics:?} failed: {error:?}");
            }
            let _ = millstream::Publisher::close(&pubsub).await;
            let _ = millstream::Subscriber::close(&pubsub).await;
        })
    }
}
