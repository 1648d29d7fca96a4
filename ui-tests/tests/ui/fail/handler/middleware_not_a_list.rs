use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::middleware]
async fn timing(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

#[millstream::handler(middleware = timing)]
async fn bill(order: Order) {
    let _ = order.id;
}

fn main() {}
