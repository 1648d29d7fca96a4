use millstream::prelude::*;

struct Timing;

impl Timing {
    #[millstream::middleware]
    async fn timing(self, message: Message, next: Next) -> HandlerResult {
        next.run(message).await
    }
}

fn main() {}
