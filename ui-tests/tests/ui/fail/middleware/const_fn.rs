use millstream::prelude::*;

#[millstream::middleware]
const async fn timing(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

fn main() {}
