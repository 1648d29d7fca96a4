//! Middleware: each built-in layer, fused runs, tower interop, the in-memory dedup store.
//!
//! One test binary per area (CI links a few binaries, not one per file); each file is a module.

#[path = "../common/mod.rs"]
mod common;
mod fused;
mod middleware;
mod stores_memory;
mod tower;
