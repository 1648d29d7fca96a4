#[millstream::topic("orders")]
union Order {
    id: u64,
    code: u32,
}

fn main() {}
