//! The shop example (being written).
fn main() {}
