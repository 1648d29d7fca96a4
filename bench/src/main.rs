//! millstream-bench: throughput, latency and peak memory of millstream against a bare tokio
//! channel (the practical limit of the machine) and, with the `peer` feature, ruststream 0.7.7.
//!
//! ```text
//! millstream-bench [--json] [--svg FILE] [--messages N] [--runs R] [--scenario NAME ...]
//! ```
//!
//! Scenarios: `baseline`, `pubsub`, `router`, `router-mw` (behind retry + poison + timeout +
//! correlation + recoverer), `drain` and `drain-mw` (the handler path alone: a queue of
//! `min(N, 100 000)` drained by the router, plain and behind the same stack), `pipeline`,
//! `router-keyed` (keyed messages, one lane), `router-c4` and `router-c4-keyed` (four lanes; keyed:
//! ordered by key), `slow-c1` and `slow-c4` (a handler that waits 1 ms, `min(N, 2 000)` messages,
//! one lane and four), `latency`, and with `--features peer`
//! `peer-router` and `peer-pipeline` (`peer` selects both). Default: all of them. `baseline` always
//! runs first, since every ratio is taken against it.
//!
//! Every payload is `{"id":<n>,"sku":"abc","qty":3}`, encoded with serde_json from `Order` by the
//! publisher and decoded back into `Order` before the consumer touches it. Each scenario runs on a
//! multi-thread tokio runtime with 2 workers; completion is awaited with an atomic counter and a
//! `Notify`, never by sleeping.
//!
//! Peak RSS: every scenario runs in a child process of its own (this binary re-executed with the
//! hidden `--child` flag), which reports its VmHWM from `/proc/self/status` at the end. VmHWM is
//! process-wide, and resetting it through `/proc/self/clear_refs` would still count the heap the
//! allocator kept from the scenarios before, so a fresh process is the reliable choice.
//!
//! `--runs R` repeats each scenario R times (each in a fresh process) and reports the run with the
//! median throughput (for `latency`: the median p99 ratio), and the highest peak RSS of all runs.
//!
//! Throughput scenarios time from the first publish to the last message handled. `latency`
//! publishes `min(N, 100 000)` messages at 50 000/s (each millisecond tick sends what is due, so a
//! late tick is made up in a burst), through the baseline channel and through one router handler,
//! three runs each, alternating which goes first, and reports each percentile's median; the send
//! and receive instants of each message go to a side table indexed by order id
//! (the payload stays the same), and the percentiles of receive − send are reported. The
//! `cpu ns/msg` column is the child's user + system time per message (both workers), less
//! disturbed than wall time on a busy machine. `targets:` checks the issue's goals on the results.
//!
//! Backends (feature `backends`; run only when named): `sqlite`, `postgres`,
//! `mysql` and `nats` (`backends` selects all four) put each durable backend beside its raw
//! client on the same server, in this process: publish one at a time, publish in batches and
//! consume-with-ack, 100 000 messages unless `--messages` is given, `--runs` alternating runs per
//! side (see `backends.rs`). A backend whose server does not answer is skipped and says so.
//!
//! `--svg FILE` writes every ratio of the run (a scenario over the tokio channel, a backend over
//! its raw client) as a bar chart (`chart.rs`).
//!
//! CI smoke test: `millstream-bench --messages 10000` (about a second; exits non-zero only when a
//! scenario fails, not when a target is missed).

mod chart;
#[cfg(feature = "backends")]
mod cpu;
mod report;
mod scenarios;
mod workload;

#[cfg(feature = "backends")]
mod backends;
#[cfg(feature = "backends")]
mod scale;
// Shared with the broker benches' binaries, which use the rest of it.
#[cfg(feature = "backends")]
#[allow(dead_code)]
mod side_by_side;

#[cfg(feature = "peer")]
mod peer;

#[cfg(feature = "amqp")]
mod amqp;

use std::process::{Command, ExitCode, Stdio};

use report::Outcome;

/// Every scenario of this build, in the order they run.
const ALL: &[&str] = &[
    "baseline",
    "pubsub",
    "router",
    "router-mw",
    "drain",
    "drain-mw",
    "pipeline",
    "router-keyed",
    "router-c4",
    "router-c4-keyed",
    "slow-c1",
    "slow-c4",
    "latency",
    #[cfg(feature = "peer")]
    "peer-router",
    #[cfg(feature = "peer")]
    "peer-pipeline",
];

/// Prefix of the line a child prints its result on.
const RESULT: &str = "millstream-bench-result ";

/// The backend scenarios (feature `backends`): by name, run only when named.
#[cfg(feature = "backends")]
const BACKENDS: &[&str] = backends::NAMES;
#[cfg(not(feature = "backends"))]
const BACKENDS: &[&str] = &[];

/// The scale-out scenarios (feature `backends`), `scale-` and the backend's name.
#[cfg(feature = "backends")]
const SCALE: &[&str] = &["scale-nats", "scale-postgres"];
#[cfg(not(feature = "backends"))]
const SCALE: &[&str] = &[];

const USAGE: &str = "usage: millstream-bench [--json] [--svg FILE] [--messages N] [--runs R] [--scenario NAME ...]
scenarios: baseline pubsub router router-mw drain drain-mw pipeline router-keyed router-c4 router-c4-keyed slow-c1 slow-c4 latency
           backends (= sqlite postgres mysql nats, each beside its raw client; feature `backends`)
           scale (= scale-nats scale-postgres: 1, 2, 4 consumer processes of one group; feature `backends`)
           peer (= peer-router peer-pipeline, feature `peer`)
           amqp (RabbitMQ against raw lapin, its own table; feature `amqp`)";

struct Args {
    json: bool,
    svg: Option<String>,
    messages: u64,
    /// Whether `--messages` was given (the backend scenarios' default is smaller).
    messages_given: bool,
    runs: usize,
    scenarios: Vec<String>,
    child: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        json: false,
        svg: None,
        messages: 1_000_000,
        messages_given: false,
        runs: 1,
        scenarios: Vec::new(),
        child: false,
    };
    let words: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let value =
        |i: usize, name: &str| words.get(i + 1).cloned().ok_or_else(|| format!("{name} needs a value"));
    while i < words.len() {
        match words[i].as_str() {
            "--json" => args.json = true,
            "--child" => args.child = true,
            "--svg" => {
                args.svg = Some(value(i, "--svg")?);
                i += 1;
            }
            "--messages" | "-n" => {
                let text = value(i, "--messages")?;
                args.messages =
                    text.replace('_', "").parse().map_err(|_| format!("bad --messages {text}"))?;
                args.messages_given = true;
                if args.messages == 0 {
                    return Err("--messages must be at least 1".to_owned());
                }
                i += 1;
            }
            "--runs" => {
                let text = value(i, "--runs")?;
                args.runs = text.parse::<usize>().map_err(|_| format!("bad --runs {text}"))?.max(1);
                i += 1;
            }
            "--scenario" | "-s" => {
                // Takes every following word up to the next flag: `--scenario router pipeline`.
                args.scenarios.push(value(i, "--scenario")?);
                i += 1;
                while let Some(next) = words.get(i + 1).filter(|w| !w.starts_with('-')) {
                    args.scenarios.push(next.clone());
                    i += 1;
                }
            }
            "--help" | "-h" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
        i += 1;
    }
    Ok(args)
}

/// Resolves names (and the `peer` alias) into the list to run, baseline first.
fn selection(names: &[String]) -> Result<Vec<&'static str>, String> {
    if names.is_empty() {
        return Ok(ALL.to_vec());
    }
    let mut wanted = vec!["baseline"];
    for name in names {
        let expanded: Vec<&str> = match name.as_str() {
            "peer" => vec!["peer-router", "peer-pipeline"],
            other => vec![other],
        };
        for name in expanded {
            if BACKENDS.contains(&name) || SCALE.contains(&name) || name == "backends" || name == "scale" {
                continue;
            }
            let Some(&known) = ALL.iter().find(|s| **s == name) else {
                if name.starts_with("peer") {
                    return Err(format!("scenario `{name}` needs the `peer` feature (--features peer)"));
                }
                return Err(format!("unknown scenario `{name}`\n{USAGE}"));
            };
            if !wanted.contains(&known) {
                wanted.push(known);
            }
        }
    }
    wanted.sort_by_key(|s| ALL.iter().position(|a| a == s));
    Ok(wanted)
}

/// Runs one scenario in this process and prints its result line (child mode).
fn run_child(scenario: &str, messages: u64) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut outcome = runtime.block_on(async {
        match scenario {
            "baseline" => scenarios::baseline(messages).await,
            "pubsub" => scenarios::pubsub(messages).await,
            "router" => scenarios::router(messages).await,
            "router-mw" => scenarios::router_mw(messages).await,
            "drain" => scenarios::drain(messages, false).await,
            "drain-mw" => scenarios::drain(messages, true).await,
            "pipeline" => scenarios::pipeline(messages).await,
            "router-keyed" => scenarios::router_lanes("router-keyed", messages, 1, true).await,
            "router-c4" => scenarios::router_lanes("router-c4", messages, 4, false).await,
            "router-c4-keyed" => scenarios::router_lanes("router-c4-keyed", messages, 4, true).await,
            "slow-c1" => scenarios::slow_lanes("slow-c1", messages, 1).await,
            "slow-c4" => scenarios::slow_lanes("slow-c4", messages, 4).await,
            "latency" => scenarios::latency(messages).await,
            #[cfg(feature = "peer")]
            "peer-router" => peer::run("router", messages).await,
            #[cfg(feature = "peer")]
            "peer-pipeline" => peer::run("pipeline", messages).await,
            other => panic!("unknown scenario `{other}`"),
        }
    });
    drop(runtime);
    outcome.peak_rss_mib = workload::peak_rss_mib();
    // The whole process: start-up is a few milliseconds, noise next to a run of a second or more.
    // (`latency` sends its messages through each side several times.)
    let passes = if scenario == "latency" { 2 * scenarios::LATENCY_PAIRS } else { 1 };
    outcome.cpu_ns_per_msg = workload::cpu_seconds() * 1e9 / (outcome.messages * passes as u64) as f64;
    println!("{RESULT}{}", serde_json::to_string(&outcome).expect("outcome serialises"));
    ExitCode::SUCCESS
}

/// Runs one scenario in a fresh child process and reads its result.
fn spawn_child(scenario: &str, messages: u64) -> Result<Outcome, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let output = Command::new(exe)
        .args(["--child", "--messages", &messages.to_string(), "--scenario", scenario])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start the `{scenario}` child: {e}"))?;
    if !output.status.success() {
        return Err(format!("scenario `{scenario}` failed ({})", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT))
        .ok_or_else(|| format!("scenario `{scenario}` printed no result"))?;
    serde_json::from_str(line).map_err(|e| format!("scenario `{scenario}`: bad result line: {e}"))
}

/// Runs `scenario` `runs` times; keeps the run with the median throughput (the median p99 ratio
/// for `latency`, whose throughput is its fixed rate) and the highest peak RSS.
fn measure(scenario: &str, messages: u64, runs: usize) -> Result<Outcome, String> {
    let mut results = (0..runs).map(|_| spawn_child(scenario, messages)).collect::<Result<Vec<_>, _>>()?;
    let peak = results.iter().map(|o| o.peak_rss_mib).fold(0.0, f64::max);
    let key = |o: &Outcome| o.latency.map_or(o.msgs_per_sec, |l| l.p99_ratio_to_baseline);
    results.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mut median = results.swap_remove(results.len() / 2);
    median.peak_rss_mib = peak;
    Ok(median)
}

fn main() -> ExitCode {
    #[cfg(feature = "backends")]
    {
        // A consumer process of the scale-out scenario: `--scale-child BACKEND TOPIC INDEX`.
        let words: Vec<String> = std::env::args().skip(1).collect();
        if let [flag, backend, topic, index] = words.as_slice() {
            if flag == "--scale-child" {
                return scale::child(backend, topic, index);
            }
        }
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let names = &args.scenarios;
    if args.child {
        let [scenario] = names.as_slice() else {
            eprintln!("--child runs exactly one scenario");
            return ExitCode::from(2);
        };
        return run_child(scenario, args.messages);
    }
    #[cfg(feature = "amqp")]
    if names.iter().any(|n| n == "amqp") {
        // Its own table: millstream against raw lapin on the same server.
        return amqp::main(usize::try_from(args.messages).unwrap_or(usize::MAX));
    }
    // The backend scenarios named (`backends` names them all), in their own order.
    let wanted_backends: Vec<&'static str> =
        BACKENDS.iter().copied().filter(|b| names.iter().any(|n| n == b || n == "backends")).collect();
    let wanted_scale: Vec<&'static str> = SCALE
        .iter()
        .copied()
        .filter(|s| names.iter().any(|n| n == s || n == "scale"))
        .map(|s| s.trim_start_matches("scale-"))
        .collect();
    if wanted_backends.is_empty()
        && wanted_scale.is_empty()
        && names.iter().any(|n| n == "backends" || n == "scale" || backend_name(n))
    {
        eprintln!("the backend scenarios need the `backends` feature (--features backends)");
        return ExitCode::from(2);
    }
    let memory_named = names.is_empty()
        || names.iter().any(|n| {
            !["backends", "scale"].contains(&n.as_str())
                && !BACKENDS.contains(&n.as_str())
                && !SCALE.contains(&n.as_str())
        });
    let selected = if memory_named {
        match selection(names) {
            Ok(selected) => selected,
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::from(2);
            }
        }
    } else {
        Vec::new()
    };
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut baseline_rate = None;
    for scenario in selected {
        if !args.json {
            eprintln!("running {scenario} ({} messages)...", args.messages);
        }
        let mut outcome = match measure(scenario, args.messages, args.runs) {
            Ok(outcome) => outcome,
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::FAILURE;
            }
        };
        if scenario == "baseline" {
            baseline_rate = Some(outcome.msgs_per_sec);
        }
        if outcome.latency.is_none() {
            outcome.ratio_to_baseline = baseline_rate.map(|b| outcome.msgs_per_sec / b);
        }
        if args.json {
            println!("{}", serde_json::to_string(&outcome).expect("outcome serialises"));
        }
        outcomes.push(outcome);
    }
    if !args.json && !outcomes.is_empty() {
        report::print_table(&outcomes);
    }
    #[cfg_attr(not(feature = "backends"), allow(unused_mut))]
    let mut bars: Vec<chart::Bar> = outcomes
        .iter()
        .filter(|o| o.scenario != "baseline")
        .filter_map(|o| {
            let ratio = o.ratio_to_baseline?;
            Some(chart::Bar {
                label: o.scenario.clone(),
                ratio,
                detail: format!("{:.0} vs {:.0} msg/s", o.msgs_per_sec, o.msgs_per_sec / ratio),
                group: "in memory, against a tokio mpsc channel".to_owned(),
            })
        })
        .collect();
    #[cfg(feature = "backends")]
    if !wanted_backends.is_empty() {
        let messages = if args.messages_given { args.messages } else { 100_000 };
        let messages = usize::try_from(messages).unwrap_or(usize::MAX);
        if !args.json {
            eprintln!(
                "running {} ({messages} messages, {} runs per side)...",
                wanted_backends.join(" "),
                args.runs
            );
        }
        let rows = match backends::run(&wanted_backends, messages, args.runs) {
            Ok(rows) => rows,
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::FAILURE;
            }
        };
        if args.json {
            for row in &rows {
                println!("{}", serde_json::to_string(row).expect("row serialises"));
            }
        } else {
            println!("{}", backends::markdown(&rows, args.runs));
        }
        bars.extend(rows.iter().map(|row| chart::Bar {
            label: row.scenario.split_once(' ').map_or(row.scenario.clone(), |(_, s)| s.to_owned()),
            ratio: row.ratio_to_raw,
            detail: format!(
                "{} vs {} msg/s",
                backends::messages_text(row.msgs_per_sec.round() as usize),
                backends::messages_text(row.raw_msgs_per_sec.round() as usize)
            ),
            group: format!("{} ({}), against {}", row.backend, row.server, row.raw),
        }));
    }
    #[cfg(feature = "backends")]
    if !wanted_scale.is_empty() {
        let messages = if args.messages_given { args.messages } else { 100_000 };
        let messages = usize::try_from(messages).unwrap_or(usize::MAX);
        let runs = match scale::run(&wanted_scale, messages) {
            Ok(runs) => runs,
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::FAILURE;
            }
        };
        if args.json {
            for run in &runs {
                println!("{}", serde_json::to_string(run).expect("run serialises"));
            }
        } else {
            println!("{}", scale::markdown(&runs));
        }
        if runs.iter().any(|run| run.lost > 0) {
            eprintln!("scale: messages were lost");
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = &args.svg {
        let title = "millstream over its baseline, measured in the same run (millstream-bench)";
        if let Err(error) = std::fs::write(path, chart::svg(title, &bars)) {
            eprintln!("cannot write {path}: {error}");
            return ExitCode::FAILURE;
        }
        if !args.json {
            eprintln!("wrote {path}");
        }
    }
    ExitCode::SUCCESS
}

/// Whether `name` is a backend scenario of any build.
fn backend_name(name: &str) -> bool {
    ["sqlite", "postgres", "mysql", "nats", "scale-nats", "scale-postgres"].contains(&name)
}
