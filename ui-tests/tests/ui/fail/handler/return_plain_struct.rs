use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

struct Invoice {
    order: u64,
}

#[millstream::handler]
async fn bill(order: Order) -> Result<Vec<Invoice>> {
    Ok(vec![Invoice { order: order.id }])
}

fn main() {}
