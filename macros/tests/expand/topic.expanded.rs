struct OrderPlaced {
    id: u64,
}
#[automatically_derived]
impl ::millstream::__private::Topic for OrderPlaced {
    const NAME: &'static str = "orders.placed";
}
struct Envelope<T: Clone> {
    inner: T,
}
#[automatically_derived]
impl<T: Clone> ::millstream::__private::Topic for Envelope<T> {
    const NAME: &'static str = "envelopes";
}
fn main() {}
