//! The lock that keeps a server restart away from the tests of that server: every test holds a
//! shared file lock while it runs (nextest runs each test in its own process, so the lock is a
//! file lock), and a restart takes it exclusively, so no other test sees the server go away and
//! only one restart runs at a time.
#![allow(dead_code)]

use std::fs::File;

fn open(path: &str) -> File {
    std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).expect("lock file")
}

/// Waits for a shared hold on the lock at `path` (no restart running) and keeps it while the
/// file lives.
#[allow(clippy::incompatible_msrv)] // `File::lock_shared`: newer than the declared MSRV, fine for tests
pub(crate) async fn shared(path: &'static str) -> File {
    tokio::task::spawn_blocking(move || {
        let file = open(path);
        file.lock_shared().expect("shared lock");
        file
    })
    .await
    .expect("lock task")
}

/// Waits for the exclusive hold of the lock at `path` (every other test of the server finished
/// or waiting).
#[allow(clippy::incompatible_msrv)]
pub(crate) fn exclusive_blocking(path: &str) -> std::io::Result<File> {
    let file = open(path);
    file.lock()?;
    Ok(file)
}
