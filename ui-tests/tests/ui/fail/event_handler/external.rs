use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::event]
struct OrderPlaced {
    id: u64,
}

#[millstream::event_handler(external)]
async fn on_placed(event: OrderPlaced) {
    let _ = event.id;
}

fn main() {}
