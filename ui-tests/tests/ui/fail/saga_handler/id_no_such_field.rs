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

#[millstream::saga_handler(start, id = order)]
async fn placed(saga: &mut Saga<Checkout>, event: OrderPlaced) {
    let _ = (saga, event);
}

fn main() {}