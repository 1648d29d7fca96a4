use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::event(version = 0)]
struct OrderPlaced {
    id: u64,
}

fn main() {}
