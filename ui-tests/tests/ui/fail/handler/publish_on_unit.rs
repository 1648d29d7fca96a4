use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::handler(publish = "invoices")]
async fn bill(order: Order) -> Result<()> {
    let _ = order.id;
    Ok(())
}

fn main() {}
