#[millstream::event]
union Placed {
    id: u64,
    code: u32,
}

fn main() {}
