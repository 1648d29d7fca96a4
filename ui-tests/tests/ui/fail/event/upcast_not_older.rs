use millstream::prelude::*;

#[derive(Deserialize)]
struct PlacedV1 {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::event(version = 2, upcast(2 = PlacedV1))]
struct OrderPlaced {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::event(upcast(1 = PlacedV1))]
struct OrderPaid {
    id: u64,
}

impl From<PlacedV1> for OrderPlaced {
    fn from(old: PlacedV1) -> Self {
        OrderPlaced { id: old.id }
    }
}

fn main() {}
