use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

struct Billing;

impl Billing {
    #[millstream::handler]
    async fn bill(order: Order) {
        let _ = order.id;
    }
}

fn main() {}
