use millstream::prelude::*;

#[derive(Clone)]
struct A;

#[millstream::handler(topic = "readings", batch = 100)]
async fn store(_a: State<A>) {}

fn main() {}
