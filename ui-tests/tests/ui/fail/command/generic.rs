use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::command]
struct Place<T> {
    item: T,
}

fn main() {}
