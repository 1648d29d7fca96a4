//! Depends on `millstream-handlers-lib` and says so: its handlers are registered.

// Nothing else of the crate is used; this line is what links it.
use millstream_handlers_lib as _;

fn main() {
    print!("{}", millstream_linking_check::lib_demo_handlers());
}
