use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::handler(retry_topics = ["0s"])]
async fn bill(order: Order) {
    let _ = order.id;
}

fn main() {}
