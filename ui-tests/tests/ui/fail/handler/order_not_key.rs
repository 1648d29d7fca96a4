use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::handler(concurrency = 4, order = "fifo")]
async fn bill(order: Order) {
    let _ = order.id;
}

fn main() {}
