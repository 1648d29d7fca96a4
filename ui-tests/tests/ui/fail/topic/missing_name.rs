#[millstream::topic]
struct Order {
    id: u64,
}

fn main() {}
