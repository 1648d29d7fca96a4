#[millstream::saga]
fn checkout() {}

fn main() {}
