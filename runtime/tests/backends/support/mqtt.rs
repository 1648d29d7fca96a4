//! A private Mosquitto for one test: its own port, configuration and persistence directory, so a
//! test can restart it, or set `max_queued_messages`, without disturbing any other test. It is
//! stopped when dropped, whatever happened (a panicking test too).
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// The shared broker of the machine (`MILLSTREAM_MQTT_URL`, default `mqtt://127.0.0.1:1883`).
pub(crate) fn shared_url() -> String {
    std::env::var("MILLSTREAM_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".to_owned())
}

/// A unique name for a test's topics, groups and instances.
pub(crate) fn unique(name: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{name}-{}", &id[id.len() - 12..])
}

pub(crate) struct Broker {
    port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

impl Broker {
    /// Starts a broker with persistence and `extra` configuration lines.
    pub(crate) fn start(extra: &str) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let dir = std::env::temp_dir().join(format!("millstream-mosquitto-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\n\
             persistence_location {}/\nlog_dest file {}/mosquitto.log\nsys_interval 1\n{extra}\n",
            dir.display(),
            dir.display()
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).expect("broker conf");
        let broker = Broker { port, dir, child: Mutex::new(None) };
        broker.launch();
        broker
    }

    fn launch(&self) {
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        *self.child.lock() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !port_open(self.port) {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker the way an operator does (SIGTERM: it saves its sessions and messages).
    fn stop(&self) {
        let Some(mut child) = self.child.lock().take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the broker and starts it again on the same port, with its saved state.
    pub(crate) fn restart(&self) {
        self.stop();
        self.launch();
    }

    /// The broker's count of shared subscriptions (`$SYS`, refreshed each second with
    /// `sys_interval 1`).
    pub(crate) fn shared_subscriptions(&self) -> Option<u64> {
        let output = Command::new("mosquitto_sub")
            .args([
                "-p",
                &self.port.to_string(),
                "-t",
                "$SYS/broker/shared_subscriptions/count",
                "-C",
                "1",
                "-W",
                "5",
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    }

    /// Waits until the broker counts at least `count` shared subscriptions.
    pub(crate) fn wait_shared_subscriptions(&self, count: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.shared_subscriptions().is_some_and(|now| now >= count) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The broker's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
