use millstream::prelude::*;

#[derive(Default, Serialize, Deserialize)]
#[millstream::saga]
struct Checkout<T> {
    item: T,
}

fn main() {}
