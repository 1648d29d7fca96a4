//! Procedural macros of millstream. Use them through the `millstream` crate, which re-exports them.
