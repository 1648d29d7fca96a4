//! CPU time per message, the bench process's and the server's together: what a capacity model
//! needs (`docs/scaling.md`), and what wall time on a shared machine does not show.
//!
//! Read from `/proc`: this process's user + system time (all its threads), and for the server
//! every process whose command name is one of its names, with the time of its children that have
//! exited (PostgreSQL serves each connection from a child process of its own; when one exits, its
//! time moves into the parent's children's time, so the sum goes on counting it).

use std::time::{Duration, Instant};

/// Linux reports CPU times in clock ticks of 1/100 s (`USER_HZ`, fixed on every architecture
/// that exposes it through `/proc`).
const TICK: Duration = Duration::from_millis(10);

/// The user + system ticks in one `/proc/PID/stat` text, with its exited children's when `children`;
/// and its command name.
fn ticks(stat: &str, children: bool) -> Option<(&str, u64)> {
    let (head, rest) = stat.rsplit_once(") ")?;
    let name = head.split_once(" (")?.1;
    // After the name: state, ppid, ..., utime (14th field of the line), stime, cutime, cstime.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let own = field(14)? + field(15)?;
    let exited = if children { field(16)? + field(17)? } else { 0 };
    Some((name, own + exited))
}

/// This process's CPU time, and that of every process named one of `server`.
fn cpu_time(server: &[&str]) -> (Duration, Duration) {
    let own = std::fs::read_to_string("/proc/self/stat").ok();
    let own = own.as_deref().and_then(|stat| ticks(stat, false)).map_or(0, |(_, t)| t);
    let mut total = 0;
    if !server.is_empty() {
        let me = std::process::id().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = entry.file_name();
            let Some(pid) = pid.to_str().filter(|p| p.bytes().all(|b| b.is_ascii_digit()) && *p != me) else {
                continue;
            };
            // (A process may exit between the listing and the read: it is then skipped, and its
            // time shows in its parent's children's time.)
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            if let Some((name, t)) = ticks(&stat, true) {
                if server.contains(&name) {
                    total += t;
                }
            }
        }
    }
    let time = |ticks: u64| TICK * u32::try_from(ticks).unwrap_or(u32::MAX);
    (time(own), time(total))
}

/// One phase of a run: its wall time and the CPU time spent meanwhile.
pub(crate) struct Phase {
    server: &'static [&'static str],
    started: Instant,
    cpu: (Duration, Duration),
}

/// What a phase measured.
#[derive(Clone, Copy)]
pub(crate) struct Measured {
    /// Messages per second.
    pub(crate) rate: f64,
    /// CPU microseconds per message of this process (the client).
    pub(crate) client_us: f64,
    /// CPU microseconds per message of the server's processes.
    pub(crate) server_us: f64,
}

impl Phase {
    /// Starts timing; `server` names the server's processes (empty for an embedded database).
    pub(crate) fn start(server: &'static [&'static str]) -> Phase {
        Phase { server, cpu: cpu_time(server), started: Instant::now() }
    }

    /// The phase's rate and CPU time per message, `messages` having passed.
    pub(crate) fn end(self, messages: usize) -> Measured {
        let elapsed = self.started.elapsed();
        let (own, server) = cpu_time(self.server);
        let per_message = |cpu: Duration| cpu.as_secs_f64() * 1e6 / messages.max(1) as f64;
        Measured {
            rate: crate::side_by_side::rate(messages, elapsed),
            client_us: per_message(own.saturating_sub(self.cpu.0)),
            server_us: per_message(server.saturating_sub(self.cpu.1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ticks;

    #[test]
    fn reads_a_stat_line() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
        // stime cutime cstime ...
        let line = "42 (nats server) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 4 0 100";
        assert_eq!(ticks(line, false), Some(("nats server", 300)));
        assert_eq!(ticks(line, true), Some(("nats server", 310)));
        assert_eq!(ticks("garbage", true), None);
    }
}
