use millstream::prelude::*;

#[millstream::middleware]
async fn timing(message: Message, next: Next) -> HandlerResult
where
    Message: Send,
{
    next.run(message).await
}

fn main() {}
