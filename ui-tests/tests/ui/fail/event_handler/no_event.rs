use millstream::prelude::*;

#[millstream::event_handler]
async fn audit(meta: Metadata) {
    let _ = meta;
}

fn main() {}
