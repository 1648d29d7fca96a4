#[millstream::middleware]
struct Timing;

fn main() {}
