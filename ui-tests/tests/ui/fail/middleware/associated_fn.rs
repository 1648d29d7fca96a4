use millstream::prelude::*;

struct Layers;

impl Layers {
    #[millstream::middleware(priority = 1)]
    async fn timing(message: Message, next: Next) -> HandlerResult {
        next.run(message).await
    }
}

fn main() {}
