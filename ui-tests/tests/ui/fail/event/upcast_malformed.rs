use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::event(version = 2, upcast = [PlacedV1])]
struct OrderPlaced {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::event(version = 2, upcast(PlacedV1))]
struct OrderPaid {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::event(version = 2, upcast(0 = PlacedV1))]
struct OrderShipped {
    id: u64,
}

fn main() {}
