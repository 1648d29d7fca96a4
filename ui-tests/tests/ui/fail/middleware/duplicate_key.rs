use millstream::prelude::*;

#[millstream::middleware(priority = 1, priority = 2)]
async fn timing(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

fn main() {}
