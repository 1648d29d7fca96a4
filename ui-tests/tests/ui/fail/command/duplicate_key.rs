use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::command(topic = "billing", topic = "payments")]
struct Charge {
    cents: u64,
}

fn main() {}
