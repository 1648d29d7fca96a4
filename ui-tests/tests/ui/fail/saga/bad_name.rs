use millstream::prelude::*;

#[derive(Default, Serialize, Deserialize)]
#[millstream::saga(name = "order checkout")]
struct Checkout {
    paid: bool,
}

fn main() {}
