//! Large payloads keep memory bounded on SQLite (issue 9): 30 messages of 5 MiB are published,
//! then consumed and acked, and each phase's peak resident set stays under its bound
//! ([`PUBLISH_BOUND_MIB`], [`CONSUME_BOUND_MIB`]).
//!
//! Each phase runs in a child process of its own (this test binary, re-run on its ignored
//! `rss_child` test), which reports its own peak RSS (`VmHWM` of `/proc/self/status`): other tests
//! of this binary, run in threads of the parent, cannot inflate the figure, and the consuming
//! phase does not inherit the heap the publishing one grew.
#![cfg(all(feature = "sqlite", target_os = "linux"))]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use millstream::{Bytes, Message, Publisher, SqlConfig, SqlPubSub, SubscribeOptions, Subscriber};

const DB_ENV: &str = "MILLSTREAM_RSS_TEST_DB";
const MODE_ENV: &str = "MILLSTREAM_RSS_TEST_MODE";
const MESSAGES: usize = 30;
const SIZE: usize = 5 * 1024 * 1024;
/// The peak RSS allowed to the process consuming the 30 messages (its runtime, SQLite's page
/// cache, the message being read). Measured here: 18 MiB (debug build); before reads were bounded
/// by bytes, 197-222 MiB, as every row of a 100-row batch was read at once.
const CONSUME_BOUND_MIB: u64 = 48;
/// The peak RSS allowed to the process publishing them, one at a time. Measured here: 29 or
/// 52 MiB, depending on which threads' malloc arenas the payload's copies land in (the payload,
/// sqlx's owned copy of its arguments, SQLite's copy of the bound blob and the record it builds).
const PUBLISH_BOUND_MIB: u64 = 96;
const TIMEOUT: Duration = Duration::from_secs(120);

/// `VmHWM` (the peak resident set) of this process, in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("a VmHWM line");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM in kB")
}

/// A payload whose bytes are all touched (a zeroed one might stay unmapped) and that says which
/// message it is.
fn payload(n: usize) -> Bytes {
    let mut bytes = vec![0u8; SIZE];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i as u8).wrapping_add(n as u8);
    }
    bytes[..8].copy_from_slice(&(n as u64).to_be_bytes());
    Bytes::from(bytes)
}

/// One phase of the workload (`MODE_ENV`: `publish` or `consume`), run only as a child of
/// `large_payloads_keep_memory_bounded`; prints its peak RSS.
#[test]
#[ignore = "helper: the child process of large_payloads_keep_memory_bounded"]
fn rss_child() {
    let (Ok(db), Ok(mode)) = (std::env::var(DB_ENV), std::env::var(MODE_ENV)) else {
        panic!("run by large_payloads_keep_memory_bounded only")
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let pubsub = SqlPubSub::open_sqlite(&db, SqlConfig::default()).await.expect("open");
        pubsub.ensure_schema().await.expect("schema");
        let start = peak_kib();
        match mode.as_str() {
            "publish" => {
                for n in 0..MESSAGES {
                    pubsub.publish("big", Message::new(payload(n))).await.expect("publish");
                }
            }
            _ => {
                let mut sub =
                    pubsub.subscribe("big", SubscribeOptions::group("readers")).await.expect("subscribe");
                for n in 0..MESSAGES {
                    let delivery = tokio::time::timeout(TIMEOUT, sub.next())
                        .await
                        .expect("a delivery in time")
                        .expect("open")
                        .expect("delivery");
                    let got = delivery.message().payload();
                    assert_eq!(got.len(), SIZE, "message {n}: size");
                    assert_eq!(
                        u64::from_be_bytes(got[..8].try_into().unwrap()),
                        n as u64,
                        "message {n}: order"
                    );
                    assert_eq!(
                        got[SIZE - 1],
                        ((SIZE - 1) as u8).wrapping_add(n as u8),
                        "message {n}: content"
                    );
                    delivery.ack().await.expect("ack");
                }
            }
        }
        let peak = peak_kib();
        Publisher::close(&pubsub).await.unwrap();
        Subscriber::close(&pubsub).await.unwrap();
        // On a line of its own (libtest prints the test's name without a newline first).
        println!("\nrss-report start_kib={start} peak_kib={peak}");
    });
}

/// Runs one phase in a child process; its (start, peak) RSS in KiB.
fn run_phase(db: &std::path::Path, mode: &str) -> (u64, u64) {
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args(["rss_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(DB_ENV, db)
        .env(MODE_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the {mode} child failed ({}):\n{stdout}", output.status);
    let report = stdout.lines().find_map(|l| l.split_once("rss-report ").map(|(_, r)| r)).expect("a report");
    let field = |name: &str| -> u64 {
        report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {report:?}"))
    };
    (field("start_kib"), field("peak_kib"))
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn large_payloads_keep_memory_bounded() {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = Dir(std::env::temp_dir().join(format!("millstream-rss-{}-{nanos}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let db = dir.0.join("big.db");
    let (start, publish) = run_phase(&db, "publish");
    let (_, consume) = run_phase(&db, "consume");
    eprintln!(
        "sql memory: {MESSAGES} x {} MiB through SQLite: peak RSS {} MiB publishing (bound \
         {PUBLISH_BOUND_MIB} MiB), {} MiB consuming (bound {CONSUME_BOUND_MIB} MiB); {} MiB after opening",
        SIZE >> 20,
        publish / 1024,
        consume / 1024,
        start / 1024,
    );
    assert!(publish / 1024 < PUBLISH_BOUND_MIB, "peak RSS publishing: {} MiB", publish / 1024);
    assert!(consume / 1024 < CONSUME_BOUND_MIB, "peak RSS consuming: {} MiB", consume / 1024);
}
