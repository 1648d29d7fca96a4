//! Handlers in a library crate are found when the binary refers to the crate, and only then.

use std::process::Command;

fn run(binary: &str) -> String {
    let output = Command::new(binary).output().expect("the binary runs");
    assert!(output.status.success(), "{binary} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn a_binary_that_uses_the_crate_finds_its_handlers() {
    assert_eq!(run(env!("CARGO_BIN_EXE_linked")), "millstream_handlers_lib::greet\n");
}

#[test]
fn a_binary_that_never_mentions_the_crate_does_not_link_it() {
    assert_eq!(run(env!("CARGO_BIN_EXE_unlinked")), "");
}
