use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[derive(Deserialize)]
struct Refund {
    id: u64,
}

#[millstream::handler]
async fn refund(refund: Refund) {
    let _ = refund.id;
}

fn main() {}
