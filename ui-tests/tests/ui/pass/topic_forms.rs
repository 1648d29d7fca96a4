//! `#[topic]` on structs, enums and generic types.
use millstream::Topic;

#[millstream::topic("unit")]
struct Unit;

#[millstream::topic("tuple")]
struct Tuple(u8, String);

#[millstream::topic("events")]
#[allow(dead_code)]
enum Event {
    Created { id: u64 },
    Deleted(u64),
}

#[millstream::topic("envelopes")]
struct Envelope<T: Clone, const N: usize> where T: Default {
    _items: [T; N],
}

fn main() {
    assert_eq!(Unit::NAME, "unit");
    assert_eq!(<Tuple as Topic>::NAME, "tuple");
    assert_eq!(Event::NAME, "events");
    assert_eq!(<Envelope<u8, 2> as Topic>::NAME, "envelopes");
    let _ = Tuple(1, String::new());
}
