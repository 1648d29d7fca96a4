use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("readings")]
struct Reading {
    value: f64,
}

#[millstream::handler(batch = 0)]
async fn store(readings: Vec<Reading>) {
    let _ = readings.len();
}

fn main() {}
