#[millstream::topic(crate = millstream)]
struct Order {
    id: u64,
}

fn main() {}
