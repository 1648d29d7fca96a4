use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::event]
struct Reading {
    value: f64,
}

#[millstream::event_handler(batch = 10)]
async fn store(readings: Vec<Reading>) {
    let _ = readings.len();
}

fn main() {}
