use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::command(verison = 2)]
struct PlaceOrder {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::command(group = "billing")]
struct ChargeCard {
    id: u64,
}

fn main() {}
