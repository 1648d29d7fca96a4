use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::handler]
async fn bill(#[payload(json)] order: Order) {
    let _ = order.id;
}

fn main() {}
