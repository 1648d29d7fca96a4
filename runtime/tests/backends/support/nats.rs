//! Shared by the NATS tests: the lock that keeps a server restart away from running cases.
//!
//! Every NATS test holds a shared lock on `/tmp/millstream-nats.lock` while it runs (nextest runs
//! each test in its own process, so the lock is a file lock); the restart case takes it
//! exclusively, so no other test sees the server go away and only one restart runs at a time.
#![allow(dead_code)]

use std::fs::File;

const LOCK: &str = "/tmp/millstream-nats.lock";

pub(crate) fn lock_file() -> File {
    std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK).expect("lock file")
}

/// Waits for a shared hold on the lock (no restart running) and keeps it while the file lives.
#[allow(clippy::incompatible_msrv)] // `File::lock_shared`: newer than the declared MSRV, fine for tests
pub(crate) async fn shared() -> File {
    tokio::task::spawn_blocking(|| {
        let file = lock_file();
        file.lock_shared().expect("shared lock");
        file
    })
    .await
    .expect("lock task")
}

/// Waits for the exclusive hold (every other NATS test finished or waiting).
#[allow(clippy::incompatible_msrv)]
pub(crate) fn exclusive_blocking() -> std::io::Result<File> {
    let file = lock_file();
    file.lock()?;
    Ok(file)
}
