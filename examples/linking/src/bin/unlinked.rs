//! Depends on `millstream-handlers-lib` (in Cargo.toml) but never mentions it: rustc does not link
//! it, so its handlers are not in this binary.

fn main() {
    print!("{}", millstream_linking_check::lib_demo_handlers());
}
