//! Shared by the Redis tests: the server's URL, a private `redis-server` with AOF for the restart
//! cases (started on a free port, stopped and removed whatever happens), and a raw connection.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared server: 127.0.0.1:6379, or `MILLSTREAM_REDIS_URL`.
pub(crate) fn url() -> String {
    std::env::var("MILLSTREAM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A prefix no other test or run uses (stream keys, group names).
pub(crate) fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("mstest:{test}:{}:{}:", std::process::id(), nanos % 1_000_000_000_000)
}

/// A plain connection of the test's own, to look at the server directly.
pub(crate) async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// A `redis-server` of the test's own, with AOF (`appendfsync always`) in a temporary directory.
/// Dropping it kills the server and removes the directory.
pub(crate) struct PrivateServer {
    pub(crate) port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

impl PrivateServer {
    /// Starts one; `None` (the test then says it is skipped) when `redis-server` is not installed.
    pub(crate) fn start(test: &str) -> Option<PrivateServer> {
        Self::start_with(test, &[])
    }

    /// Starts one with more arguments for `redis-server`.
    pub(crate) fn start_with(test: &str, args: &[&str]) -> Option<PrivateServer> {
        if Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_err() {
            eprintln!("{test}: skipped, redis-server is not installed");
            return None;
        }
        let dir = std::env::temp_dir().join(unique(test).replace(':', "_"));
        std::fs::create_dir_all(&dir).unwrap();
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let mut server = PrivateServer { port: free_port(), dir, args, child: None };
        server.launch();
        Some(server)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !listening(self.port) {
            assert!(Instant::now() < deadline, "redis-server on {} did not listen", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: no shutdown of its own) and starts it again on the same port
    /// and directory; returns once it accepts connections.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
