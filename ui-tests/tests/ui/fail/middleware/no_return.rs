use millstream::prelude::*;

#[millstream::middleware]
async fn timing(message: Message, next: Next) {
    let _ = next.run(message).await;
}

fn main() {}
