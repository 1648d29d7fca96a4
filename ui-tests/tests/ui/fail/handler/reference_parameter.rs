use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::handler]
async fn bill(order: Order, meta: &Metadata) {
    let _ = (order.id, meta);
}

fn main() {}
