//! Shared by the NATS tests: the lock that keeps a server restart away from running cases.
//!
//! Every NATS test holds a shared lock on `/tmp/millstream-nats.lock` while it runs (nextest runs
//! each test in its own process, so the lock is a file lock); the restart case takes it
//! exclusively, so no other test sees the server go away and only one restart runs at a time.
#![allow(dead_code)]

use std::fs::File;

const LOCK: &str = "/tmp/millstream-nats.lock";

/// Waits for a shared hold on the lock (no restart running) and keeps it while the file lives.
pub(crate) async fn shared() -> File {
    super::restart_lock::shared(LOCK).await
}

/// Waits for the exclusive hold (every other NATS test finished or waiting).
pub(crate) fn exclusive_blocking() -> std::io::Result<File> {
    super::restart_lock::exclusive_blocking(LOCK)
}
