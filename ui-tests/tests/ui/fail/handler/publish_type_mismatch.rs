use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::topic("invoices")]
struct Invoice {
    order: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::topic("receipts")]
struct Receipt {
    order: u64,
}

#[millstream::handler(publish = Receipt)]
async fn bill(order: Order) -> Option<Invoice> {
    Some(Invoice { order: order.id })
}

fn main() {}
