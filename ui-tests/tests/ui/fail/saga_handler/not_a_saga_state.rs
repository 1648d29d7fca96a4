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

#[derive(Default, Serialize, Deserialize)]
struct Plain {
    paid: bool,
}

#[millstream::saga_handler(start)]
async fn placed(saga: &mut Saga<Plain>, event: OrderPlaced) {
    let _ = (saga, event);
}

fn main() {}