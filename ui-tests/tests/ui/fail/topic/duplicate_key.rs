#[millstream::topic("orders", crate = millstream, crate = ::millstream)]
struct Order {
    id: u64,
}

fn main() {}
