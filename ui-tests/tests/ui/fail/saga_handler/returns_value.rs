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

#[derive(Serialize, Deserialize)]
#[millstream::command]
struct ChargeCard {
    id: u64,
}

#[millstream::saga_handler(start)]
async fn placed(saga: &mut Saga<Checkout>, event: OrderPlaced) -> Result<ChargeCard, Error> {
    saga.paid = false;
    Ok(ChargeCard { id: event.id })
}

fn main() {}