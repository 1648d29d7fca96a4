use millstream::prelude::*;

#[millstream::middleware]
fn timing(message: Message, next: Next) -> HandlerResult {
    let _ = (message, next);
    Ok(Default::default())
}

fn main() {}
