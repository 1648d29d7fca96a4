//! The conformance suite against NATS JetStream (127.0.0.1:4222; override with
//! `MILLSTREAM_NATS_URL`), including a restart of the local nats-server in the middle of a run.
//!
//! The restart takes the NATS tests' lock exclusively (`support/nats.rs`), so no other test sees
//! the server go away and only one restart runs at a time; the server is started again whatever
//! happens (a guard's drop).
#![cfg(all(feature = "conformance", feature = "nats"))]

use std::fs::File;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use millstream::conformance::{BoxFuture, Harness};
use millstream::pubsub::nats::{NatsConfig, NatsPubSub};
use millstream::pubsub::PubSub;
use millstream::Error;
use parking_lot::Mutex;

use crate::support::nats as lock;

const SERVER: &str = "/usr/sbin/nats-server";

fn url() -> String {
    std::env::var("MILLSTREAM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn config() -> NatsConfig {
    // A short ack wait: a vanished consumer's messages come back quickly.
    // Heartbeats stop after 1 s: a slow handler's message then comes back after the ack wait
    // (the suite's `slow_handler_past_the_deadline`; `nats_backend` tests the heartbeat).
    NatsConfig::default()
        .stream_prefix("MSCONF_")
        .ack_wait(Duration::from_secs(3))
        .max_hold(Duration::from_secs(1))
}

struct NatsHarness {
    /// The shared lock this case holds while it runs (given up only to restart the server).
    shared: Mutex<Option<File>>,
}

fn server_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if std::fs::read_link(entry.path().join("exe")).is_ok_and(|exe| exe == Path::new(SERVER)) {
            pids.push(pid);
        }
    }
    pids
}

fn port_open() -> bool {
    TcpStream::connect_timeout(&"127.0.0.1:4222".parse().unwrap(), Duration::from_millis(200)).is_ok()
}

fn start_server() {
    let status = Command::new("start-stop-daemon")
        .args(["--start", "--oknodo", "--background", "--exec", SERVER, "--"])
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            "4222",
            "-js",
            "-sd",
            "/var/lib/nats-server",
            "-l",
            "/var/log/nats-server.log",
        ])
        .status();
    if let Err(error) = status {
        eprintln!("starting nats-server failed: {error}");
    }
}

/// Starts the server when dropped: it must run again whatever happened in between.
struct StartOnDrop;

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        if !port_open() {
            start_server();
        }
    }
}

fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return Err(Error::msg(format!("timed out: {what}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn restart_blocking() -> Result<(), Error> {
    let _start = StartOnDrop;
    let pids = server_pids();
    if pids.is_empty() {
        return Err(Error::msg("no nats-server process found"));
    }
    for pid in &pids {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    wait("nats-server to stop", Duration::from_secs(30), || {
        pids.iter().all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    })?;
    start_server();
    wait("nats-server to listen", Duration::from_secs(30), port_open)
}

impl Harness for NatsHarness {
    fn ack_deadline(&self) -> Option<Duration> {
        Some(Duration::from_secs(3))
    }

    fn name(&self) -> &str {
        "nats"
    }

    fn release_on_drop_is_immediate(&self) -> bool {
        // JetStream 2.9 may hand a message released as its subscription is dropped to that
        // subscription's pending pull request: it comes back after the ack wait.
        false
    }

    fn connect(&self) -> BoxFuture<'_, millstream::Result<Arc<dyn PubSub>>> {
        Box::pin(async move { Ok(Arc::new(NatsPubSub::connect(&url(), config()).await?) as Arc<dyn PubSub>) })
    }

    fn can_restart(&self) -> bool {
        Path::new(SERVER).exists() && url() == "nats://127.0.0.1:4222"
    }

    fn restart_server(&self) -> BoxFuture<'_, millstream::Result<()>> {
        Box::pin(async move {
            // Give up this case's shared lock, wait for every other case to finish, restart.
            drop(self.shared.lock().take());
            let result = tokio::task::spawn_blocking(|| {
                let exclusive = lock::exclusive_blocking().map_err(|e| Error::msg(format!("lock: {e}")))?;
                let result = restart_blocking();
                drop(exclusive);
                result
            })
            .await
            .map_err(|e| Error::msg(e.to_string()))?;
            *self.shared.lock() = Some(lock::shared().await);
            result?;
            // JetStream answers once it has recovered its streams.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let probe = async {
                    let pubsub = NatsPubSub::connect(&url(), config()).await?;
                    pubsub.ensure_stream("conf.restart.probe").await?;
                    Ok::<_, Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(5), probe).await {
                    Ok(Ok(())) => return Ok(()),
                    _ if Instant::now() > deadline => return Err(Error::msg("JetStream did not come back")),
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
    }

    fn cleanup<'a>(&'a self, topics: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Ok(pubsub) = NatsPubSub::connect(&url(), config()).await {
                if let Err(error) = pubsub.delete_topics(topics).await {
                    eprintln!("cleanup of {topics:?} failed: {error:?}");
                }
            }
        })
    }
}

async fn harness() -> NatsHarness {
    NatsHarness { shared: Mutex::new(Some(lock::shared().await)) }
}

millstream::conformance_tests!(harness);
