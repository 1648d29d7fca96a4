use millstream::prelude::*;

#[millstream::middleware]
async extern "C" fn timing(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}

fn main() {}
