//! Handlers declared in a library crate.
//!
//! A binary that depends on this crate runs these handlers with `App::from_registry()` only if it
//! refers to the crate somewhere: rustc does not link a dependency nothing mentions, and then its
//! registrations are not in the binary. A binary that needs nothing else from it writes
//!
//! ```ignore
//! use millstream_handlers_lib as _;
//! ```
//!
//! `examples/linking` proves both sides: one binary with that line finds [`greet`], one without
//! it finds nothing.

use millstream::prelude::*;

/// A greeting to answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[millstream::topic("lib-demo.greetings")]
pub struct Greeting {
    /// Who to greet.
    pub name: String,
}

/// The answer to a [`Greeting`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[millstream::topic("lib-demo.replies")]
pub struct Reply {
    /// The greeting's text.
    pub text: String,
}

/// Answers each greeting; the reply goes to [`Reply`]'s topic.
#[millstream::handler(service = "lib-demo")]
pub async fn greet(greeting: Greeting) -> Reply {
    Reply { text: format!("hello, {}", greeting.name) }
}
