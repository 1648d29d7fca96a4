use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::handler]
async fn audit(meta: Metadata) {
    let _ = meta;
}

fn main() {}
