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
    certs: Option<PathBuf>,
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
        let mut server = PrivateServer { port: free_port(), dir, args, certs: None, child: None };
        server.launch();
        Some(server)
    }

    /// Starts one that speaks only TLS on its port, with a certificate for `localhost` and
    /// 127.0.0.1 signed by a CA made for it (`ca.crt` in [`dir`](Self::dir)); `None` when
    /// `redis-server` or `openssl` is missing.
    pub(crate) fn start_tls(test: &str) -> Option<PrivateServer> {
        let dir = std::env::temp_dir().join(format!("{}-certs", unique(test).replace(':', "_")));
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        };
        std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let steps: [&[&str]; 3] = [
            &[
                &["req", "-x509"],
                &ec[..],
                &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=millstream test CA"],
            ]
            .concat(),
            &[&["req"], &ec[..], &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]]
                .concat(),
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        ];
        for step in steps {
            if !openssl(step).is_ok_and(|status| status.success()) {
                eprintln!("{test}: skipped, openssl could not make the certificates ({step:?})");
                let _ = std::fs::remove_dir_all(&dir);
                return None;
            }
        }
        let file = |name: &str| dir.join(name).display().to_string();
        let args = [
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            "{port}".to_owned(),
            "--tls-cert-file".to_owned(),
            file("server.crt"),
            "--tls-key-file".to_owned(),
            file("server.key"),
            "--tls-ca-cert-file".to_owned(),
            file("ca.crt"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Self::start_with(test, &args)?;
        server.certs = Some(dir);
        Some(server)
    }

    /// The directory of the certificates of a [`start_tls`](Self::start_tls) server.
    pub(crate) fn certs(&self) -> &std::path::Path {
        self.certs.as_deref().expect("a TLS server")
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
            .args(self.args.iter().map(|a| a.replace("{port}", &self.port.to_string())))
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
        if let Some(certs) = &self.certs {
            let _ = std::fs::remove_dir_all(certs);
        }
    }
}
