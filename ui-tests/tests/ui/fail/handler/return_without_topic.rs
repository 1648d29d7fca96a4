use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[derive(Serialize)]
struct Invoice {
    order: u64,
}

#[millstream::handler]
async fn bill(order: Order) -> Result<Invoice> {
    Ok(Invoice { order: order.id })
}

fn main() {}
