#[millstream::command]
fn place_order() {}

fn main() {}
