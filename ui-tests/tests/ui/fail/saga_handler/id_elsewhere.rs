use millstream::prelude::*;
use millstream::Saga;

#[derive(Default, Serialize, Deserialize)]
#[millstream::saga]
struct Checkout {
    paid: bool,
}

#[derive(Serialize, Deserialize)]
#[millstream::event]
struct OrderPlaced {
    id: u64,
}

#[millstream::event_handler(id = id)]
async fn placed(event: OrderPlaced) {
    let _ = event;
}

fn main() {}