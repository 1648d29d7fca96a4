use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::event(topic = "order events", name = "Order Placed")]
struct OrderPlaced {
    id: u64,
}

fn main() {}
