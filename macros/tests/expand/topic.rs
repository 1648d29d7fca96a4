#[millstream::topic("orders.placed")]
struct OrderPlaced {
    id: u64,
}

#[millstream::topic("envelopes")]
struct Envelope<T: Clone> {
    inner: T,
}

fn main() {}
