use millstream::prelude::*;

#[millstream::middleware]
async unsafe fn timing(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

fn main() {}
