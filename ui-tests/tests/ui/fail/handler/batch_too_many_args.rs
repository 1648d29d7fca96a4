use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("readings")]
struct Reading {
    value: f64,
}

#[derive(Clone)]
struct A;

#[millstream::handler(batch = 100)]
async fn store(readings: Vec<Reading>, _a: State<A>, _b: State<A>, _c: State<A>, _d: State<A>) {
    let _ = readings.len();
}

fn main() {}
