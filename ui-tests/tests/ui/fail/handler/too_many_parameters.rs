use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::handler]
async fn bill(
    _order: Order,
    _a: Metadata,
    _b: Metadata,
    _c: Metadata,
    _d: Metadata,
    _e: Metadata,
    _f: Metadata,
    _g: Metadata,
    _h: Metadata,
    _i: Metadata,
    _j: Metadata,
    _k: Metadata,
    _l: Metadata,
) {
}

fn main() {}
