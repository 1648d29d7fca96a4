use millstream::prelude::*;

#[millstream::middleware]
async fn timing(message: Bytes, next: Next) -> HandlerResult {
    next.run(Message::new(message)).await
}

fn main() {}
