// Only expanded, not compiled (the compiled forms are in ui-tests/tests/ui/pass/batch_forms.rs).
use millstream::prelude::*;

struct Reading {
    value: f64,
}

#[derive(Clone)]
struct Db;

/// A batch handler: `Vec<Reading>` is the batch, `Reading` the payload type.
#[millstream::handler(topic = "readings", batch = 100, linger = "20ms")]
async fn store(readings: Vec<Reading>, State(_db): State<Db>) -> BatchResult {
    let _ = readings.len();
    BatchResult::ok()
}

fn main() {}
