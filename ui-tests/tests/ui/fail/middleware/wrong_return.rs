use millstream::prelude::*;

#[millstream::middleware]
async fn timing(message: Message, next: Next) -> Result<()> {
    next.run(message).await.map(drop)
}

fn main() {}
