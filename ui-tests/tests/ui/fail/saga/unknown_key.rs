use millstream::prelude::*;

#[derive(Default, Serialize, Deserialize)]
#[millstream::saga(nme = "checkout")]
struct Checkout {
    paid: bool,
}

fn main() {}
