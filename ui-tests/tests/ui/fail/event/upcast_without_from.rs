use millstream::prelude::*;

#[derive(Deserialize)]
struct PlacedV1 {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::event(version = 2, upcast(1 = PlacedV1))]
struct OrderPlaced {
    id: u64,
}

fn main() {}
