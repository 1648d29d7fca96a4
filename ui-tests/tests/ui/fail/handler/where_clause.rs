use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::handler]
async fn bill(order: Order)
where
    Order: Send,
{
    let _ = order.id;
}

fn main() {}
