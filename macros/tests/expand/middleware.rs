use millstream::prelude::*;

#[millstream::middleware(priority = 10)]
async fn timing(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

fn main() {}
