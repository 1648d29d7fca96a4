use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::command]
struct PlaceOrder {
    id: u64,
}

#[millstream::command_handler(topic = "orders")]
async fn place(order: PlaceOrder) {
    let _ = order.id;
}

fn main() {}
