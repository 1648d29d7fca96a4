#[millstream::topic(orders)]
struct Order {
    id: u64,
}

fn main() {}
