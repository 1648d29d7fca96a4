//! Shared by the AMQP tests: the server's address, the lock that keeps a server restart away
//! from running tests (as `support/nats.rs` does for NATS), and `rabbitmqctl` helpers.
#![allow(dead_code)]

use std::fs::File;
use std::process::Command;
use std::time::{Duration, Instant};

use millstream::Error;

const LOCK: &str = "/tmp/millstream-amqp.lock";

/// The server (`MILLSTREAM_AMQP_URL`, default the local RabbitMQ as guest).
pub(crate) fn url() -> String {
    std::env::var("MILLSTREAM_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The `host:port` part of [`url`] (port 5672 when it names none).
pub(crate) fn host_port() -> String {
    let url = url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    }
}

/// Whether the tests may run `rabbitmqctl` against the server (a local one).
pub(crate) fn local() -> bool {
    std::env::var("MILLSTREAM_AMQP_URL").is_err()
        && Command::new("rabbitmqctl").arg("--help").output().is_ok()
}

/// Waits for a shared hold on the lock (no restart running) and keeps it while the file lives.
pub(crate) async fn shared() -> File {
    super::restart_lock::shared(LOCK).await
}

/// Waits for the exclusive hold (every other AMQP test finished or waiting).
pub(crate) fn exclusive_blocking() -> std::io::Result<File> {
    super::restart_lock::exclusive_blocking(LOCK)
}

/// Runs `rabbitmqctl args...`; its stdout.
pub(crate) fn rabbitmqctl(args: &[&str]) -> Result<String, Error> {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| Error::msg(format!("rabbitmqctl {args:?}: {e}")))?;
    if !output.status.success() {
        return Err(Error::msg(format!(
            "rabbitmqctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Starts the app when dropped: the server must run again whatever happened in between.
struct StartOnDrop;

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        if let Err(error) = rabbitmqctl(&["start_app"]) {
            eprintln!("starting RabbitMQ again failed: {error}; trying rabbitmq-server -detached");
            let _ = Command::new("rabbitmq-server").arg("-detached").status();
        }
    }
}

/// Stops the RabbitMQ application and starts it again (`rabbitmqctl stop_app` / `start_app`),
/// holding the exclusive lock; waits until it listens again.
pub(crate) fn restart_blocking() -> Result<(), Error> {
    let exclusive = exclusive_blocking().map_err(|e| Error::msg(format!("lock: {e}")))?;
    let result = (|| {
        let start = StartOnDrop;
        rabbitmqctl(&["stop_app"])?;
        drop(start);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect_timeout(
            &"127.0.0.1:5672".parse().unwrap(),
            Duration::from_millis(200),
        )
        .is_err()
        {
            if Instant::now() > deadline {
                return Err(Error::msg("RabbitMQ did not listen again within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })();
    drop(exclusive);
    result
}

/// Names of the server's queues that contain `part`.
pub(crate) fn queues_containing(part: &str) -> Vec<String> {
    match rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name"]) {
        Ok(out) => out.lines().map(str::trim).filter(|q| q.contains(part)).map(str::to_owned).collect(),
        Err(error) => {
            eprintln!("listing queues failed: {error}");
            Vec::new()
        }
    }
}
