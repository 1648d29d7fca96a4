//! Snapshots of what the macros expand to, fully expanded by `cargo expand` (`macrotest`):
//! `tests/expand/*.rs` and their `.expanded.rs`. Needs `cargo install cargo-expand`; regenerate
//! with `MACROTEST=overwrite cargo test -p millstream-macros --test expand`.
//!
//! The registration macro is expanded too, so the snapshots show the default collector (`linkme`)
//! as it expands on Linux. The cases are copied to a fixed directory first: the expansion contains
//! `file!()`, which would otherwise hold the checkout's own path. Runs from several checkouts on one
//! machine take turns through a lock directory, and a snapshot is written back next to its case
//! only when it is new or `MACROTEST=overwrite` asks for it: a failing run never rewrites one.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

const FIXED_DIR: &str = "/tmp/millstream-macros-expand";
const LOCK_DIR: &str = "/tmp/millstream-macros-expand.lock";

/// Holds the lock directory; removes it when dropped.
struct Lock;

impl Lock {
    fn take() -> Lock {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            match fs::create_dir(LOCK_DIR) {
                Ok(()) => return Lock,
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A lock left by a run that was killed is stale after ten minutes.
                    let age = fs::metadata(LOCK_DIR)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok());
                    if age.is_some_and(|age| age > Duration::from_secs(600)) {
                        let _ = fs::remove_dir(LOCK_DIR);
                    }
                    assert!(Instant::now() < deadline, "{LOCK_DIR} is held by another run for too long");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => panic!("cannot create {LOCK_DIR}: {error}"),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_dir(LOCK_DIR);
    }
}

#[test]
fn expansions() {
    let installed = std::process::Command::new("cargo")
        .args(["expand", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(installed, "the expansion snapshots need cargo-expand: `cargo install cargo-expand`");

    let _lock = Lock::take();
    let overwrite = std::env::var("MACROTEST").is_ok_and(|v| v == "overwrite");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expand");
    let fixed = Path::new(FIXED_DIR);
    let _ = fs::remove_dir_all(fixed);
    fs::create_dir_all(fixed).unwrap();
    for entry in fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, fixed.join(path.file_name().unwrap())).unwrap();
    }
    // macrotest names each case's crate `macrotest<N>`, N its index among every `*.rs` the glob
    // matches, snapshots included; the expansion shows the name (`module_path!()`). A new case
    // gets an empty snapshot first, so that N is already what it will be once the real one
    // exists, and this run rewrites the copies (only the new ones go back unless asked).
    let mut new_case = false;
    for entry in fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".rs").filter(|stem| !stem.ends_with(".expanded")) {
            let snapshot = fixed.join(format!("{stem}.expanded.rs"));
            if !snapshot.exists() {
                fs::write(&snapshot, "").unwrap();
                new_case = true;
            }
        }
    }
    if new_case && !overwrite {
        std::env::set_var("MACROTEST", "overwrite");
    }
    let outcome = std::panic::catch_unwind(|| macrotest::expand(format!("{FIXED_DIR}/*.rs")));
    // New snapshots, or all of them when asked to overwrite, go back next to their cases.
    for entry in fs::read_dir(fixed).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let target = source.join(&name);
        let wanted = overwrite || !target.exists() || fs::read(&target).is_ok_and(|text| text.is_empty());
        if name.ends_with(".expanded.rs") && wanted && fs::read(&path).ok() != fs::read(&target).ok() {
            fs::copy(&path, &target).unwrap();
        }
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
