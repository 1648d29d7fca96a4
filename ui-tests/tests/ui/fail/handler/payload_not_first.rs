use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::handler]
async fn bill(meta: Metadata, order: Order) {
    let _ = (meta, order.id);
}

fn main() {}
