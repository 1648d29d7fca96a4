use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("readings")]
struct Reading {
    value: f64,
}

#[millstream::handler(batch = 100)]
async fn store(reading: Reading) {
    let _ = reading.value;
}

fn main() {}
