#[millstream::topic("orders", krate = millstream)]
struct Order {
    id: u64,
}

fn main() {}
