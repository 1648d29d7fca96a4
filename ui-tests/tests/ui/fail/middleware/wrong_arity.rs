use millstream::prelude::*;

#[millstream::middleware]
async fn timing(message: Message) -> HandlerResult {
    let _ = message;
    Ok(Default::default())
}

fn main() {}
