use millstream::prelude::*;

#[millstream::middleware(priority = "high")]
async fn timing(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

fn main() {}
