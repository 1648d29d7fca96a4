use millstream::prelude::*;

#[millstream::middleware]
async fn timing() -> HandlerResult {
    Ok(Default::default())
}

fn main() {}
