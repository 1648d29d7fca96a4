// Built with `MILLSTREAM_COMMAND_TOPICS=everything` (see `tests/ui.rs`): a naming rule without
// `{name}` would put every command on one topic.
use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::command]
struct PlaceOrder {
    id: u64,
}

fn main() {}
