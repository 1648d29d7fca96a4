//! The `millstream` binary run as a process, as a user runs it: its help, its errors, and
//! publish, tail and poison against SQLite (a file) and NATS (the local server).

use std::process::{Command, Output, Stdio};
use std::time::Duration;

#[cfg(any(feature = "sqlite", feature = "nats"))]
use serde_json::Value;

/// How long a poison read waits for the next message before it takes the topic as read: generous,
/// since a loaded machine may take a while to hand over the first one.
#[cfg(any(feature = "sqlite", feature = "nats"))]
const IDLE: &str = "3";

fn millstream(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_millstream"))
        .args(args)
        .env_remove("MILLSTREAM_PUBSUB")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run millstream");
    // A generous bound: a command that hangs fails the test instead of the run.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("millstream {args:?} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn ok(args: &[&str]) -> (String, String) {
    let output = millstream(args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(output.status.success(), "millstream {args:?} failed: {stderr}{stdout}");
    (stdout, stderr)
}

#[cfg_attr(not(any(feature = "sqlite", feature = "nats")), allow(dead_code))]
fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}.{}", &id[id.len() - 12..])
}

#[test]
fn help_lists_every_command() {
    let (stdout, _) = ok(&["--help"]);
    for command in ["run", "list", "graph", "asyncapi", "publish", "tail", "poison"] {
        assert!(stdout.contains(&format!("  {command} ")), "{command} in:\n{stdout}");
    }
    let (poison, _) = ok(&["poison", "--help"]);
    for action in ["list", "show", "requeue"] {
        assert!(poison.contains(&format!("  {action} ")), "{action} in:\n{poison}");
    }
    let (tail, _) = ok(&["tail", "--help"]);
    assert!(tail.contains("--pubsub <PUBSUB>") && tail.contains("MILLSTREAM_PUBSUB"), "{tail}");
}

#[cfg(feature = "nats")]
#[test]
fn unreachable_servers_are_clear_errors() {
    let output = millstream(&["tail", "--pubsub", "nats://127.0.0.1:1", "t"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("connecting to nats://127.0.0.1:1"), "{stderr}");
}

#[test]
fn bad_urls_and_missing_backends_are_clear_errors() {
    let output = millstream(&["publish", "--pubsub", "rabbit://host", "t", "p"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown backend `rabbit:`"), "{stderr}");

    if cfg!(not(feature = "kafka")) {
        let output = millstream(&["publish", "--pubsub", "kafka://broker:9092", "t", "p"]);
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("`kafka:` URLs need millstream's `kafka` feature"), "{stderr}");
    }

    let output = millstream(&["publish", "t"]);
    assert_eq!(output.status.code(), Some(2), "a missing --pubsub is a usage error");
    let (stdout, _) = ok(&["list"]);
    assert_eq!(stdout.trim(), "no handlers are linked into this binary");
}

/// Publishes two messages with metadata and a key, then tails them from the start.
#[cfg(any(feature = "sqlite", feature = "nats"))]
fn publish_and_tail(url: &str) {
    let topic = unique("cli.orders");
    ok(&["publish", "--pubsub", url, &topic, r#"{"id":1}"#, "--header", "source=cli", "--key", "k1"]);
    ok(&["publish", "--pubsub", url, &topic, "not json"]);
    let (stdout, stderr) =
        ok(&["tail", "--pubsub", url, &topic, "--from-start", "--count", "2", "--compact"]);
    let lines: Vec<Value> =
        stdout.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["payload"], serde_json::json!({ "id": 1 }));
    assert_eq!(lines[0]["metadata"]["source"], "cli");
    assert_eq!(lines[0]["key"], "k1");
    assert_eq!(lines[0]["topic"], topic.as_str());
    assert_eq!(lines[1]["payload"], "not json", "a payload that is not JSON is shown as text");
    assert!(stderr.contains(&format!("2 message(s) from {topic}")), "{stderr}");
}

/// A poisoned message is listed, filtered, and requeued to its topic once, without its poison
/// metadata. `dry_run`: a dry run first, which gives every message back to the requeue group
/// (on NATS 2.9 a given-back message reaches the next process only after the ack wait: the
/// server keeps the closed reader's pull open until it expires, so that case is left out there).
#[cfg(any(feature = "sqlite", feature = "nats"))]
fn poison_round_trip(url: &str, dry_run: bool) {
    let (poison_topic, original) = (unique("cli.poison"), unique("cli.jobs"));
    let reason = "--header=millstream.poison.reason=timed out talking to the carrier";
    let topic_header = format!("--header=millstream.poison.topic={original}");
    ok(&[
        "publish",
        "--pubsub",
        url,
        &poison_topic,
        r#"{"job":7}"#,
        reason,
        &topic_header,
        "--header=millstream.poison.handler=shop::ship",
    ]);
    ok(&[
        "publish",
        "--pubsub",
        url,
        &poison_topic,
        r#"{"job":8}"#,
        "--header=millstream.poison.reason=bad sku",
        &topic_header,
        "--header=millstream.poison.handler=shop::bill",
    ]);

    let (listed, summary) =
        ok(&["poison", "list", "--pubsub", url, "--topic", &poison_topic, "--idle", IDLE]);
    assert!(listed.contains("handler shop::ship") && listed.contains("handler shop::bill"), "{listed}");
    assert!(summary.contains("2 of 2 poisoned message(s)"), "{summary}");
    let (shown, _) = ok(&[
        "poison",
        "show",
        "--pubsub",
        url,
        "--topic",
        &poison_topic,
        "--reason",
        "carrier",
        "--idle",
        IDLE,
    ]);
    assert!(shown.contains("\"job\": 7") && !shown.contains("\"job\": 8"), "{shown}");

    if dry_run {
        let (dry, _) = ok(&[
            "poison",
            "requeue",
            "--pubsub",
            url,
            "--topic",
            &poison_topic,
            "--handler",
            "shop::ship",
            "--dry-run",
            "--idle",
            IDLE,
        ]);
        assert!(dry.contains(&format!("to {original}")) && dry.starts_with("would requeue"), "{dry}");
    }
    let (requeued, summary) = ok(&[
        "poison",
        "requeue",
        "--pubsub",
        url,
        "--topic",
        &poison_topic,
        "--handler",
        "shop::ship",
        "--idle",
        IDLE,
    ]);
    assert!(requeued.starts_with("requeued"), "{requeued}");
    assert!(summary.contains("requeued 1 of 2"), "{summary}");
    // Each once: the same requeue again finds nothing new to requeue.
    let (_, again) = ok(&[
        "poison",
        "requeue",
        "--pubsub",
        url,
        "--topic",
        &poison_topic,
        "--handler",
        "shop::ship",
        "--idle",
        IDLE,
    ]);
    assert!(again.contains("requeued 0 of"), "{again}");

    let (back, _) = ok(&["tail", "--pubsub", url, &original, "--from-start", "--count", "1", "--compact"]);
    let back: Value = serde_json::from_str(back.trim()).expect("JSON");
    assert_eq!(back["payload"], serde_json::json!({ "job": 7 }));
    let metadata = back["metadata"].as_object().expect("metadata");
    assert!(metadata.keys().all(|k| !k.starts_with("millstream.poison.")), "{metadata:?}");
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_publish_tail_and_poison() {
    let dir = std::env::temp_dir().join(unique("millstream-cli"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}", dir.join("app.db").display());
    publish_and_tail(&url);
    poison_round_trip(&url, true);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The runtime's NATS tests restart the local server holding this lock exclusively; every test
/// of that server holds it shared (`runtime/tests/backends/support/restart_lock.rs`).
#[cfg(feature = "nats")]
#[allow(clippy::incompatible_msrv)] // `File::lock_shared`: newer than the declared MSRV, fine for tests
fn nats_restart_lock() -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/millstream-nats.lock")
        .expect("lock file");
    file.lock_shared().expect("shared lock");
    file
}

#[cfg(feature = "nats")]
#[test]
fn nats_publish_tail_and_poison() {
    let _lock = nats_restart_lock();
    let url = std::env::var("MILLSTREAM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    publish_and_tail(&url);
    poison_round_trip(&url, false);
}

#[test]
fn docs_writes_a_self_contained_page() {
    let path = std::env::temp_dir().join(format!("millstream-docs-{}.html", std::process::id()));
    let (_, stderr) = ok(&[
        "docs",
        "--title",
        "nothing",
        "--server",
        "prod=nats://nats:4222",
        "--out",
        path.to_str().unwrap(),
    ]);
    assert!(stderr.contains("wrote"), "{stderr}");
    let page = std::fs::read_to_string(&path).expect("the page");
    assert!(page.starts_with("<!doctype html>") && page.contains("<h1>nothing</h1>"), "{page}");
    assert!(page.contains("<td>prod</td><td>nats</td><td>nats:4222</td>"), "{page}");
    assert!(!page.contains("<script"), "no scripts");
    let _ = std::fs::remove_file(path);
}
