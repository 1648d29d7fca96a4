//! Kafka test helpers: the shared broker's address, unique names, and a private tansu broker for
//! one test (its own port and SQLite file, so that a test can kill and restart it), stopped when
//! dropped whatever happened, and by a watchdog when the test process dies by a signal.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The shared broker of the machine (`MILLSTREAM_KAFKA_BROKERS`, default `127.0.0.1:9092`).
pub(crate) fn shared_brokers() -> String {
    std::env::var("MILLSTREAM_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A unique name for a test's topics and groups.
pub(crate) fn unique(name: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{name}-{}", &id[id.len() - 12..])
}

/// The tansu binary: `TANSU`, else the one on `PATH` or in cargo's bin directory.
fn tansu() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU") {
        return path.into();
    }
    let cargo_bin = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"))
        .join("bin/tansu");
    if cargo_bin.exists() {
        cargo_bin
    } else {
        "tansu".into()
    }
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Starts a watchdog that SIGKILLs the broker `pid` once this test process is gone: `Drop` does
/// not run when a test process dies by a signal (nextest's timeout, a crash), and the broker
/// would be left running. The watchdog ends by itself once the broker is gone (killed by `Drop`
/// or a restart), checking once a second, so it never outlives both long enough for `pid` to
/// be reused. It holds none of the test's pipes (nextest waits for those to close).
fn watch_for_orphan(pid: u32) {
    let script = r#"while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
if kill -0 "$2" 2>/dev/null && ! kill -0 "$1" 2>/dev/null; then kill -9 "$2"; fi"#;
    let spawned = Command::new("sh")
        .args(["-c", script, "watchdog", &std::process::id().to_string(), &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(error) = spawned {
        eprintln!(
            "no watchdog for tansu (pid {pid}); it outlives this process if it dies by a signal: {error}"
        );
    }
}

/// A private tansu broker with SQLite storage: messages and committed offsets survive a kill.
pub(crate) struct Broker {
    port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Broker {
    pub(crate) fn start() -> Broker {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let dir = std::env::temp_dir().join(format!("millstream-tansu-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let broker = Broker { port, dir, child: Mutex::new(None) };
        broker.launch();
        broker
    }

    fn launch(&self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join("tansu.log")).expect("broker log");
        let child = Command::new(tansu())
            .current_dir(&self.dir)
            .args([
                "broker",
                "--storage-engine",
                "sqlite://tansu.db",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu (installed by .ci/test)");
        watch_for_orphan(child.id());
        *self.child.lock() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !port_open(self.port) {
            assert!(Instant::now() < deadline, "tansu did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the broker (SIGKILL: nothing is flushed but what SQLite committed).
    pub(crate) fn kill(&self) {
        let Some(mut child) = self.child.lock().take() else { return };
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the broker and starts it again on the same port, with its stored state.
    pub(crate) fn restart(&self) {
        self.kill();
        self.launch();
    }

    pub(crate) fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
