use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::handler(topik = "orders", group = "a", group = "b")]
fn bill(order: Order, extra: Order) {
    let _ = (order.id, extra.id);
}

fn main() {}
