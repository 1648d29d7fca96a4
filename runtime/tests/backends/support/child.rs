//! A consumer in a child process, for the tests that SIGKILL one mid-stream: the child is this
//! test binary running one `#[ignore]`d test, told what to do through environment variables,
//! and it records what it did in a log file, one line per event, flushed as it goes.

use std::ffi::OsStr;
use std::io::Write;
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

/// Appends one line to a child's log in a single write, so that a SIGKILL leaves either the
/// whole line or none of it (`writeln!` may write a line in pieces).
pub(crate) fn log_line(log: &mut std::fs::File, line: &str) {
    log.write_all(format!("{line}\n").as_bytes()).expect("log");
}

/// The complete lines of a child's log so far (none before the child created it); a last line
/// without its newline (a write cut short) is left out.
pub(crate) fn log_lines(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.split_inclusive('\n').filter_map(|line| line.strip_suffix('\n')).map(str::to_owned).collect()
}

/// Kills the child whatever happens to the test.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
