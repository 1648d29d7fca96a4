use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::handler(retry_topics = [1])]
async fn bill(order: Order) {
    let _ = order.id;
}

fn main() {}
