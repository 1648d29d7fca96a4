use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::saga]
struct Checkout {
    paid: bool,
}

fn main() {}
