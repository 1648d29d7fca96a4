//! What the broker benches share (`redis-streams`, `kafka-bench`): the payload, the command
//! line, and the runs of millstream and the raw client side by side, with their medians as a
//! Markdown table.

use std::process::ExitCode;
use std::time::Duration;

/// The ~100-byte JSON payload every scenario sends.
#[allow(dead_code)] // (a binary whose messages are its own, as inbox-bench's, does not use it)
pub(crate) const PAYLOAD: &[u8] =
    br#"{"id":123456,"sku":"ABC-123","qty":3,"note":"benchmark message, about 100 bytes"}"#;

/// Any error of a run.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `--messages N` (default 100 000), `--runs N` (default 3), the server's address, and switches.
pub(crate) struct Args {
    pub(crate) messages: usize,
    pub(crate) runs: usize,
    pub(crate) address: String,
    /// The switches given.
    pub(crate) switches: Vec<String>,
}

impl Args {
    /// Parses the command line: `address_flag` (such as `--url`) sets the address, and each of
    /// `switches` may be given alone.
    pub(crate) fn parse(
        address_flag: &str,
        default_address: &str,
        switches: &[&str],
    ) -> Result<Args, String> {
        let mut args =
            Args { messages: 100_000, runs: 3, address: default_address.to_owned(), switches: Vec::new() };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--messages" => args.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?,
                "--runs" => args.runs = value()?.parse::<usize>().map_err(|e| format!("--runs: {e}"))?.max(1),
                flag if flag == address_flag => args.address = value()?,
                flag if switches.contains(&flag) => args.switches.push(arg),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(args)
    }
}

/// Messages per second.
pub(crate) fn rate(messages: usize, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// A topic name no other run uses.
pub(crate) fn unique(side: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("bench.{side}.{}.{}", std::process::id(), nanos % 1_000_000_000_000)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// How one bench names itself and its scenarios.
pub(crate) struct Bench<const N: usize> {
    /// The binary's name, for messages.
    pub(crate) name: &'static str,
    /// The baseline's column header ("raw rdkafka").
    pub(crate) raw: &'static str,
    /// One line above the table (what was sent, how).
    pub(crate) setting: String,
    /// The scenarios, in the order of the rates each run returns.
    pub(crate) scenarios: [&'static str; N],
}

impl<const N: usize> Bench<N> {
    /// Runs both sides `runs` times (which goes first alternates from run to run, so that
    /// neither always finds the server warmer), prints each run to stderr and the medians as a
    /// table. A failed run ends the bench with a failure.
    ///
    /// To profile one side alone, `MILLSTREAM_BENCH_ONLY=millstream` (or `raw`) runs only that
    /// one; the table is then left out.
    pub(crate) async fn run(
        &self,
        runs: usize,
        ours: impl AsyncFnMut() -> Result<[f64; N], BoxError>,
        raw: impl AsyncFnMut() -> Result<[f64; N], BoxError>,
    ) -> ExitCode {
        let medians = match self.medians(runs, ours, raw).await {
            Ok(Some(medians)) => medians,
            Ok(None) => return ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{}: a run failed: {error}", self.name);
                return ExitCode::FAILURE;
            }
        };
        println!("{}, median of {runs} runs\n", self.setting);
        println!("| scenario | millstream msg/s | {} msg/s | millstream / raw |", self.raw);
        println!("|---|---:|---:|---:|");
        for (name, (a, b)) in self.scenarios.iter().zip(medians) {
            if a.is_nan() || b.is_nan() {
                continue;
            }
            println!("| {name} | {a:.0} | {b:.0} | {:.2} |", a / b);
        }
        ExitCode::SUCCESS
    }

    /// Runs both sides `runs` times, alternating which goes first, prints each run to stderr, and
    /// returns each scenario's medians as (millstream, raw); `None` when
    /// `MILLSTREAM_BENCH_ONLY` ran one side alone.
    pub(crate) async fn medians(
        &self,
        runs: usize,
        mut ours: impl AsyncFnMut() -> Result<[f64; N], BoxError>,
        mut raw: impl AsyncFnMut() -> Result<[f64; N], BoxError>,
    ) -> Result<Option<[(f64, f64); N]>, BoxError> {
        let mut figures: [Vec<Vec<f64>>; 2] = [vec![Vec::new(); N], vec![Vec::new(); N]];
        let only = std::env::var("MILLSTREAM_BENCH_ONLY").ok();
        let skipped = |side: usize| only.as_deref().is_some_and(|only| only != ["millstream", "raw"][side]);
        for run in 0..runs {
            let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order.into_iter().filter(|&side| !skipped(side)) {
                let rates = if side == 0 { ours().await? } else { raw().await? };
                let shown: Vec<String> = self
                    .scenarios
                    .iter()
                    .zip(&rates)
                    .map(|(name, rate)| format!("{name} {rate:.0}"))
                    .collect();
                let who = if side == 0 { "millstream" } else { "raw" };
                eprintln!("{} run {run} {who}: {}", self.name, shown.join(", "));
                for (i, rate) in rates.into_iter().enumerate() {
                    figures[side][i].push(rate);
                }
            }
        }
        if only.is_some() {
            return Ok(None);
        }
        Ok(Some(std::array::from_fn(|i| (median(figures[0][i].clone()), median(figures[1][i].clone())))))
    }
}

/// Parses the arguments, builds the two-worker runtime and runs `bench` on them; a bad
/// argument exits with 2.
pub(crate) fn main_with<F>(name: &str, args: Result<Args, String>, bench: impl FnOnce(Args) -> F) -> ExitCode
where
    F: std::future::Future<Output = ExitCode>,
{
    let args = match args {
        Ok(args) => args,
        Err(error) => {
            eprintln!("{name}: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(bench(args))
}
