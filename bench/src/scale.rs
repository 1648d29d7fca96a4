//! Scale-out (`--scenario scale`, or `scale-nats`, `scale-postgres`): one consumer group read by
//! 1, 2 and 4 consumer processes, then by 4 of which one is killed with SIGKILL a third of the way
//! through.
//!
//! The parent publishes the messages first (payload: the message's index, also its key), then
//! starts the consumer processes (this binary again, `--scale-child BACKEND TOPIC INDEX`; each
//! with a consumer name of its own). Each subscribes to the topic in the group `scale` and says
//! `ready`; once all have, the parent waits 2.5 s for the group to settle and tells them to go.
//! The PostgreSQL topic has 12 partitions (`SqlConfig::partitions`), divided among the group's
//! processes. For every delivery a process writes the message's index on its stdout
//! before it acks it, so the parent knows every message that was handled, even by a process that
//! is killed later (a message written but not acked comes back: a duplicate, never a gap). The
//! parent reads the lines and stops the processes once every index has been seen.
//!
//! Reported per run: total msg/s (from the moment every process is subscribed to the last new
//! index), each process's share of the messages, and for the kill run how many indices were never
//! handled (must be 0) and how many were handled twice. NATS: 100 000 messages (or `--messages`)
//! on the local server; PostgreSQL: a fifth of that (it is slower).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use millstream::pubsub::nats::{NatsConfig, NatsPubSub};
use millstream::{Message, Publisher, SqlConfig, SqlPubSub, SubscribeOptions, Subscriber};
use serde::Serialize;

use crate::side_by_side::{unique, BoxError};

const NATS_URL: &str = "nats://127.0.0.1:4222";
const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const GROUP: &str = "scale";
/// How long a killed process's unacked messages stay with it before they are redelivered.
const HANDOVER: Duration = Duration::from_secs(3);
/// How long a run may take before it is given up.
const DEADLINE: Duration = Duration::from_secs(300);

/// One run: `processes` consumers of one group.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Run {
    pub(crate) scenario: String,
    pub(crate) backend: &'static str,
    pub(crate) processes: usize,
    pub(crate) messages: usize,
    pub(crate) msgs_per_sec: f64,
    /// Each process's share of the distinct messages handled, in process order.
    pub(crate) shares: Vec<f64>,
    /// The largest share over the smallest among the processes left alive (1 for one process;
    /// infinite, `null` in JSON, when one of them handled nothing).
    pub(crate) spread: f64,
    /// Whether one process was SIGKILLed a third of the way through.
    pub(crate) killed_one: bool,
    /// Messages no process handled (the run gave up before they came).
    pub(crate) lost: usize,
    /// Deliveries of a message already handled by some process.
    pub(crate) duplicates: usize,
}

/// Partitions of the PostgreSQL topic: divided evenly among 1, 2, 3 and 4 processes.
const SQL_PARTITIONS: u32 = 12;
/// How long the parent waits, once every process is subscribed, before it tells them to start:
/// long enough for a partitioned SQL group's members to see each other (they beat every second
/// with a 3 s ack deadline) and divide the partitions.
const SETTLE: Duration = Duration::from_millis(2500);

fn sql_config() -> SqlConfig {
    SqlConfig::default().table_prefix("msscale_").ack_deadline(HANDOVER).partitions(SQL_PARTITIONS)
}

fn nats_config() -> NatsConfig {
    NatsConfig::default().stream_prefix("MSSCALE_").ack_wait(HANDOVER)
}

/// Runs the named backends (skipping those whose server does not answer).
pub(crate) fn run(names: &[&'static str], messages: usize) -> Result<Vec<Run>, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut runs = Vec::new();
    for &name in names {
        let address = if name == "nats" { "127.0.0.1:4222" } else { "127.0.0.1:5432" };
        if !crate::backends::answers(&format!("scale-{name}"), address) {
            continue;
        }
        let count = if name == "nats" { messages } else { (messages / 5).max(1) };
        for (processes, kill) in [(1, false), (2, false), (4, false), (4, true)] {
            let topic = unique(&format!("scale{processes}"));
            runtime.block_on(publish(name, &topic, count)).map_err(|e| format!("scale-{name}: {e}"))?;
            let run = consume(name, &topic, count, processes, kill)?;
            eprintln!(
                "scale-{name}: {processes} process(es){}: {:.0} msg/s, shares {:?}, {} lost, {} duplicates",
                if kill { ", one killed" } else { "" },
                run.msgs_per_sec,
                run.shares.iter().map(|s| format!("{:.0}%", s * 100.0)).collect::<Vec<_>>(),
                run.lost,
                run.duplicates
            );
            runtime.block_on(delete(name, &topic)).map_err(|e| format!("scale-{name}: {e}"))?;
            runs.push(run);
        }
    }
    Ok(runs)
}

fn payload(index: usize) -> String {
    format!(r#"{{"index":{index},"note":"scale-out bench message"}}"#)
}

fn index_of(payload: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(payload).ok()?;
    let start = text.find(':')? + 1;
    let end = text[start..].find(',')? + start;
    text[start..end].parse().ok()
}

async fn publish(name: &str, topic: &str, count: usize) -> Result<(), BoxError> {
    // Each message keyed by its index: spread over a partitioned topic's partitions by the key's
    // hash (a batch without keys would go to one partition).
    let messages = |from: usize, to: usize| {
        (from..to).map(|i| Message::new(payload(i)).with_key(format!("k{i}"))).collect::<Vec<_>>()
    };
    macro_rules! fill {
        ($pubsub:expr) => {{
            let pubsub = $pubsub;
            // The group first, at the beginning of the topic.
            drop(pubsub.subscribe(topic, SubscribeOptions::group(GROUP)).await.map_err(|e| e.into_std())?);
            let mut at = 0;
            while at < count {
                let to = (at + 100).min(count);
                pubsub.publish_batch(topic, messages(at, to)).await.map_err(|e| e.into_std())?;
                at = to;
            }
            Publisher::close(&pubsub).await.map_err(|e| e.into_std())?;
            Subscriber::close(&pubsub).await.map_err(|e| e.into_std())?;
        }};
    }
    if name == "nats" {
        fill!(NatsPubSub::connect(NATS_URL, nats_config()).await.map_err(|e| e.into_std())?);
    } else {
        fill!(SqlPubSub::connect(POSTGRES_URL, sql_config()).await.map_err(|e| e.into_std())?);
    }
    Ok(())
}

async fn delete(name: &str, topic: &str) -> Result<(), BoxError> {
    let topics = [topic.to_owned()];
    if name == "nats" {
        let pubsub = NatsPubSub::connect(NATS_URL, nats_config()).await.map_err(|e| e.into_std())?;
        pubsub.delete_topics(&topics).await.map_err(|e| e.into_std())?;
    } else {
        let pubsub = SqlPubSub::connect(POSTGRES_URL, sql_config()).await.map_err(|e| e.into_std())?;
        pubsub.delete_topics(&topics).await.map_err(|e| e.into_std())?;
    }
    Ok(())
}

/// What a consumer process says: it is subscribed, or it handled a message.
enum Said {
    Ready,
    Handled(usize, usize),
    Gone(usize),
}

/// Starts `processes` consumers and reads what they handle until every index is seen.
fn consume(
    name: &'static str,
    topic: &str,
    count: usize,
    processes: usize,
    kill: bool,
) -> Result<Run, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let mut children: Vec<Child> = Vec::new();
    for p in 0..processes {
        let mut child = Command::new(&exe)
            .args(["--scale-child", name, topic, &p.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start a consumer process: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let said = if line == "ready" {
                    Said::Ready
                } else if let Ok(index) = line.parse() {
                    Said::Handled(p, index)
                } else {
                    continue;
                };
                if tx.send(said).is_err() {
                    return;
                }
            }
            let _ = tx.send(Said::Gone(p));
        });
        children.push(child);
    }
    drop(tx);
    let outcome = watch(&rx, &mut children, count, processes, kill);
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (elapsed, seen, per_process, duplicates) = outcome?;
    let lost = seen.iter().filter(|s| !**s).count();
    let total: usize = per_process.iter().sum();
    let shares: Vec<f64> = per_process.iter().map(|&n| n as f64 / total.max(1) as f64).collect();
    let live: Vec<f64> = if kill { shares[1..].to_vec() } else { shares.clone() };
    // (Infinite where a process handled nothing: a SQL group's standby.)
    let smallest = live.iter().copied().fold(f64::MAX, f64::min);
    let spread =
        if smallest > 0.0 { live.iter().copied().fold(0.0, f64::max) / smallest } else { f64::INFINITY };
    Ok(Run {
        scenario: format!("scale-{name} {processes}{}", if kill { " kill" } else { "" }),
        backend: if name == "nats" { "NATS JetStream" } else { "PostgreSQL" },
        processes,
        messages: count,
        msgs_per_sec: (count - lost) as f64 / elapsed.as_secs_f64().max(1e-9),
        shares,
        spread,
        killed_one: kill,
        lost,
        duplicates,
    })
}

type Watched = (Duration, Vec<bool>, Vec<usize>, usize);

fn watch(
    rx: &mpsc::Receiver<Said>,
    children: &mut [Child],
    count: usize,
    processes: usize,
    kill: bool,
) -> Result<Watched, String> {
    let mut seen = vec![false; count];
    let mut distinct = 0;
    let mut per_process = vec![0usize; processes];
    let mut duplicates = 0;
    let mut ready = 0;
    let mut started = None;
    let mut killed = false;
    let begun = Instant::now();
    while distinct < count {
        let left = DEADLINE.saturating_sub(begun.elapsed());
        let said = match rx.recv_timeout(left) {
            Ok(said) => said,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                eprintln!("scale: gave up after {DEADLINE:?} with {distinct} of {count} messages handled");
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!(
                    "every consumer process ended with {distinct} of {count} messages handled"
                ));
            }
        };
        match said {
            Said::Ready => {
                ready += 1;
                if ready == processes {
                    // Every process is subscribed: let the group settle, then start them all.
                    std::thread::sleep(SETTLE);
                    for child in children.iter_mut() {
                        let stdin = child.stdin.as_mut().ok_or("a consumer without stdin")?;
                        writeln!(stdin, "go").map_err(|e| format!("cannot start a consumer: {e}"))?;
                        stdin.flush().map_err(|e| format!("cannot start a consumer: {e}"))?;
                    }
                    started = Some(Instant::now());
                }
            }
            Said::Handled(p, index) if index < count => {
                if seen[index] {
                    duplicates += 1;
                } else {
                    seen[index] = true;
                    distinct += 1;
                    per_process[p] += 1;
                }
                if kill && !killed && distinct >= count / 3 {
                    killed = true;
                    // SIGKILL: no clean shutdown, its unacked messages stay with it until redelivered.
                    children[0].kill().map_err(|e| format!("cannot kill a consumer: {e}"))?;
                }
            }
            Said::Handled(..) => {}
            Said::Gone(p) if !(kill && p == 0) => return Err(format!("consumer process {p} ended early")),
            Said::Gone(_) => {}
        }
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    Ok((elapsed, seen, per_process, duplicates))
}

/// A consumer process: subscribes in the group, prints `ready`, then each message's index before
/// acking it, until it is killed.
pub(crate) fn child(name: &str, topic: &str, process: &str) -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let result: Result<(), BoxError> = runtime.block_on(async {
        let mut sub = if name == "nats" {
            let pubsub = NatsPubSub::connect(NATS_URL, nats_config()).await.map_err(|e| e.into_std())?;
            pubsub.subscribe(topic, SubscribeOptions::group(GROUP)).await.map_err(|e| e.into_std())?
        } else {
            // One consumer name per process: processes that share a host and a name take each
            // other for a restart of the same consumer (`SqlConfig::consumer`).
            let config = sql_config().consumer(format!("scale-{process}"));
            let pubsub = SqlPubSub::connect(POSTGRES_URL, config).await.map_err(|e| e.into_std())?;
            pubsub.subscribe(topic, SubscribeOptions::group(GROUP)).await.map_err(|e| e.into_std())?
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
        // Wait for the parent's `go` (every process subscribed and the group settled).
        tokio::task::spawn_blocking(|| std::io::stdin().lines().next()).await?;
        while let Some(delivery) = sub.next().await {
            // A failed delivery or ack is what a consumer meets in production (a lease lost to
            // a stall, a reconnection): the message comes back, here or to another process.
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(error) => {
                    eprintln!("scale consumer: {error}");
                    continue;
                }
            };
            let index = index_of(delivery.message().payload()).ok_or("a payload without an index")?;
            writeln!(out, "{index}")?;
            out.flush()?;
            if let Err(error) = delivery.ack().await {
                eprintln!("scale consumer: {error}");
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("scale consumer: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The runs as a table.
pub(crate) fn markdown(runs: &[Run]) -> String {
    let mut out = String::from(
        "| backend | processes | msg/s | shares | largest / smallest | lost | handled twice |\n\
         |---|---:|---:|---|---:|---:|---:|\n",
    );
    for run in runs {
        let shares: Vec<String> = run.shares.iter().map(|s| format!("{:.0}%", s * 100.0)).collect();
        out.push_str(&format!(
            "| {} | {}{} | {:.0} | {} | {} | {} | {} |\n",
            run.backend,
            run.processes,
            if run.killed_one { " (one killed at 1/3)" } else { "" },
            run.msgs_per_sec,
            shares.join(" "),
            if run.spread.is_finite() {
                format!("{:.2}", run.spread)
            } else {
                "a process handled none".to_owned()
            },
            run.lost,
            run.duplicates
        ));
    }
    out
}
