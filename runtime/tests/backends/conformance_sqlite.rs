//! The conformance suite against the SQLite backend: a fresh database file per case.
#![cfg(all(feature = "conformance", feature = "sqlite"))]

use std::sync::Arc;
use std::time::Duration;

use millstream::conformance::{BoxFuture, Harness};
use millstream::pubsub::PubSub;
use millstream::{SqlConfig, SqlPubSub};

pub(crate) struct SqliteHarness {
    _dir: TempDir,
    path: std::path::PathBuf,
    /// `SqlConfig::partitions` of every connection.
    partitions: u32,
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Harness for SqliteHarness {
    fn ack_deadline(&self) -> Option<Duration> {
        Some(Duration::from_secs(3))
    }

    fn name(&self) -> &str {
        if self.partitions == 1 {
            "sqlite"
        } else {
            "sqlite (partitioned)"
        }
    }

    fn connect(&self) -> BoxFuture<'_, millstream::Result<Arc<dyn PubSub>>> {
        Box::pin(async move {
            // A short ack deadline: a consumer that vanished hands its messages over quickly.
            let config = SqlConfig::default()
                .ack_deadline(Duration::from_secs(3))
                // Heartbeats stop after 1 s: a slow handler's message then comes back at the deadline
                // (the suite's `slow_handler_past_the_deadline`; `sql_faults` tests the heartbeat).
                .max_hold(Duration::from_secs(1))
                .poll_interval(Duration::from_millis(20))
                .partitions(self.partitions);
            Ok(Arc::new(SqlPubSub::open_sqlite(&self.path, config).await?) as Arc<dyn PubSub>)
        })
    }
}

/// A harness on a new database file, each topic in `partitions` partitions.
pub(crate) fn harness_with(partitions: u32) -> SqliteHarness {
    let dir = TempDir::new("millstream-conformance-sqlite");
    let path = dir.0.join("queue.db");
    SqliteHarness { _dir: dir, path, partitions }
}

async fn harness() -> SqliteHarness {
    harness_with(1)
}

millstream::conformance_tests!(harness);
