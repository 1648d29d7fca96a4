use millstream::prelude::*;

#[millstream::middleware]
async fn timing(message: Message, next: u32) -> HandlerResult {
    let _ = (message, next);
    Ok(Default::default())
}

fn main() {}
