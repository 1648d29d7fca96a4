use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct PlaceOrder {
    id: u64,
}

#[millstream::command_handler]
async fn place(order: PlaceOrder) {
    let _ = order.id;
}

fn main() {}
