use millstream::prelude::*;

#[millstream::middleware]
struct Timing;

fn main() {}
