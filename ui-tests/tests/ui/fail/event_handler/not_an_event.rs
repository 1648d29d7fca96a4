use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::command]
struct PlaceOrder {
    id: u64,
}

#[millstream::event_handler]
async fn on_place(order: PlaceOrder) {
    let _ = order.id;
}

fn main() {}
