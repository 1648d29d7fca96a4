//! The user guide's Rust snippets as doc tests: each chapter of `docs/guide/src` is the doc of one
//! module below, so `cargo test -p millstream-guide --doc --features full` compiles every ```rust
//! block of the guide and runs those not marked `no_run`. Hidden `# ` lines (not shown in the
//! book) complete the fragments and check what the prose claims.
//!
//! The chapters whose snippets need backends or metrics are compiled only with the `full`
//! feature (see `Cargo.toml`); `docs/guide/check.sh` turns it on.

#[cfg(doctest)]
#[doc = include_str!("../src/introduction.md")]
mod introduction {}

#[cfg(doctest)]
#[doc = include_str!("../src/getting-started.md")]
mod getting_started {}

#[cfg(doctest)]
#[doc = include_str!("../src/handlers.md")]
mod handlers {}

#[cfg(doctest)]
#[doc = include_str!("../src/middleware.md")]
mod middleware {}

#[cfg(all(doctest, feature = "full"))]
#[doc = include_str!("../src/backends.md")]
mod backends {}

#[cfg(doctest)]
#[doc = include_str!("../src/testing.md")]
mod testing {}

#[cfg(all(doctest, feature = "full"))]
#[doc = include_str!("../src/operating.md")]
mod operating {}
