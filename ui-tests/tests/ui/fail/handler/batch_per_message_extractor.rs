use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("readings")]
struct Reading {
    value: f64,
}

#[millstream::handler(batch = 100)]
async fn store(readings: Vec<Reading>, meta: Metadata) {
    let _ = (readings.len(), meta);
}

fn main() {}
