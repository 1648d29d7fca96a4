//! Snapshots of what the macros expand to, fully expanded by `cargo expand` (`macrotest`):
//! `tests/expand/*.rs` and their `.expanded.rs`. Needs `cargo install cargo-expand`; regenerate
//! with `MACROTEST=overwrite cargo test -p millstream-macros --test expand`.
//!
//! The registration macro is expanded too, so the snapshots show the default collector (`linkme`)
//! as it expands on Linux. The cases are copied to a fixed directory first: the expansion contains
//! `file!()`, which would otherwise hold the checkout's own path.

use std::fs;
use std::path::Path;

const FIXED_DIR: &str = "/tmp/millstream-macros-expand";

#[test]
fn expansions() {
    let installed = std::process::Command::new("cargo")
        .args(["expand", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(installed, "the expansion snapshots need cargo-expand: `cargo install cargo-expand`");

    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expand");
    let fixed = Path::new(FIXED_DIR);
    let _ = fs::remove_dir_all(fixed);
    fs::create_dir_all(fixed).unwrap();
    for entry in fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, fixed.join(path.file_name().unwrap())).unwrap();
    }
    let outcome = std::panic::catch_unwind(|| macrotest::expand(format!("{FIXED_DIR}/*.rs")));
    // New or refreshed snapshots go back next to their cases.
    for entry in fs::read_dir(fixed).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let target = source.join(&name);
        if name.ends_with(".expanded.rs") && fs::read(&path).ok() != fs::read(&target).ok() {
            fs::copy(&path, &target).unwrap();
        }
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
