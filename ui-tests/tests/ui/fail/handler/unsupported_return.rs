use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::handler]
async fn bill(order: Order) -> u64 {
    order.id
}

fn main() {}
