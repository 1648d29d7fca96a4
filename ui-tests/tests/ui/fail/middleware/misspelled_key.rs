use millstream::prelude::*;

#[millstream::middleware(priorty = 1)]
async fn timing(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

fn main() {}
