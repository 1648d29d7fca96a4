use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

struct Tenant(String);

#[millstream::handler]
async fn bill(order: Order, #[extract] tenant: Tenant) {
    let _ = (order.id, tenant.0);
}

fn main() {}
