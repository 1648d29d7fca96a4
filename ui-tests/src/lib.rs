//! Compile-error tests of millstream's macros live in `tests/`: `tests/ui/fail/<macro>/<mistake>.rs`
//! with the exact `.stderr` rustc prints, one mistake per file, and `tests/ui/pass/` with every
//! supported form. Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test -p
//! millstream-ui-tests` and read each one: they follow the stable compiler they were made with.
