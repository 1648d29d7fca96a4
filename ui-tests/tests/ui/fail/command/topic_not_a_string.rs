use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::command(topic = billing)]
struct Charge {
    cents: u64,
}

fn main() {}
