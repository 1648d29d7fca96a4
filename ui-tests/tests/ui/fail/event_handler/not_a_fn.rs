#[millstream::event_handler]
struct OnPlaced;

fn main() {}
