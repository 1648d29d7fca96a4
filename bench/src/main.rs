//! millstream-bench (being written).
fn main() {}
