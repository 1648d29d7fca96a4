#[millstream::topic("orders")]
fn orders() {}

fn main() {}
