//! `millstream`: the command line of [`millstream::cli`] with no handlers of its own: publish,
//! tail and requeue poisoned messages on any backend by URL (`millstream --help`).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    millstream::cli::main(millstream::App::new()).await
}
