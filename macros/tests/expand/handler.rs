// Only expanded, not compiled: the serde derives the real code needs are left out to keep the
// snapshot short (the compiled forms are in ui-tests/tests/ui/pass).
use millstream::prelude::*;

#[millstream::topic("orders.placed")]
struct OrderPlaced {
    id: u64,
}

#[millstream::topic("invoices.issued")]
struct InvoiceIssued {
    order_id: u64,
}

#[derive(Clone)]
struct Prices;

#[millstream::handler(group = "billing", concurrency = 4)]
async fn bill(order: OrderPlaced, State(_prices): State<Prices>) -> Result<InvoiceIssued> {
    Ok(InvoiceIssued { order_id: order.id })
}

fn main() {}
