use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::topic("refunds")]
struct Refund {
    id: u64,
}

#[millstream::handler(topic = Refund)]
async fn bill(order: Order) {
    let _ = order.id;
}

fn main() {}
