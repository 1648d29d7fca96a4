// Only expanded, not compiled: the serde derives the real code needs are left out to keep the
// snapshot short (the compiled forms are in ui-tests/tests/ui/pass/cqrs_forms.rs).
use millstream::prelude::*;

#[millstream::command]
struct PlaceOrder {
    id: u64,
}

#[millstream::event(topic = "orders", version = 2)]
struct OrderPlaced {
    id: u64,
}

#[millstream::command_handler]
async fn place(order: PlaceOrder) -> OrderPlaced {
    OrderPlaced { id: order.id }
}

#[millstream::event_handler]
async fn on_placed(event: OrderPlaced) {
    let _ = event.id;
}

fn main() {}
