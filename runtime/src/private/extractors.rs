//! The types `#[millstream::handler]` takes for extractors by their names (its list lives in the
//! macros crate, with the arities) are extractors here: the build fails if one is renamed or
//! dropped without the list following.

millstream_macros::__assert_extractors!();
