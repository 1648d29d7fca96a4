use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::command]
struct PlaceOrder {
    id: u64,
}

#[millstream::command_handler]
async fn place(order: PlaceOrder) {
    let _ = order.id;
}

#[millstream::command_handler]
async fn place_again(order: PlaceOrder) {
    let _ = order.id;
}

fn main() {}
