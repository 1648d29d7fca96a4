//! Compile-error tests of millstream macros live in `tests/`.
