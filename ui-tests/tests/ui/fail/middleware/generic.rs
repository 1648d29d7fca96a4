use millstream::prelude::*;

#[millstream::middleware]
async fn timing<T>(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

fn main() {}
