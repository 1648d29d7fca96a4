//! A consumer in a child process, for the tests that SIGKILL one mid-stream: the child is this
//! test binary running one `#[ignore]`d test, told what to do through environment variables,
//! and it records what it did in a log file, one line per event, flushed as it goes.

use std::ffi::OsStr;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts this test binary running only `test` (a function of `module`, marked `#[ignore]`),
/// with `env` set.
pub(crate) fn spawn(module: &str, test: &str, env: &[(&str, &OsStr)]) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([
            &crate::common::test_name(module, test),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("spawn the consumer")
}

/// The lines of a child's log so far (none before the child created it).
pub(crate) fn log_lines(log: &Path) -> Vec<String> {
    match std::fs::File::open(log) {
        Ok(file) => std::io::BufReader::new(file).lines().map_while(Result::ok).collect(),
        Err(_) => Vec::new(),
    }
}

/// Kills the child whatever happens to the test.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
