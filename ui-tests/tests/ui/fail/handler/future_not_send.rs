use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::handler]
async fn bill(order: Order) {
    let shared = std::rc::Rc::new(order.id);
    tokio::task::yield_now().await;
    let _ = shared;
}

fn main() {}
