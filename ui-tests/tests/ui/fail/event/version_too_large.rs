use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::event(version = 4294967296)]
struct OrderPlaced {
    id: u64,
}

fn main() {}
