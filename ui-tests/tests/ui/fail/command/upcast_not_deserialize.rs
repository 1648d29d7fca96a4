use millstream::prelude::*;

struct PlaceV1 {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::command(version = 2, upcast(1 = PlaceV1))]
struct PlaceOrder {
    id: u64,
}

impl From<PlaceV1> for PlaceOrder {
    fn from(old: PlaceV1) -> Self {
        PlaceOrder { id: old.id }
    }
}

fn main() {}
