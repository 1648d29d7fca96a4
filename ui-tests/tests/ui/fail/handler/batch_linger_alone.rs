use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("readings")]
struct Reading {
    value: f64,
}

#[millstream::handler(linger = "50ms")]
async fn store(reading: Reading) {
    let _ = reading.value;
}

fn main() {}
