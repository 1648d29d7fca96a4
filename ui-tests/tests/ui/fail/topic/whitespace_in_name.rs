#[millstream::topic("orders placed")]
struct Order {
    id: u64,
}

fn main() {}
