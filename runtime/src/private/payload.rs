//! The bound on a handler's payload.

use serde::de::DeserializeOwned;

/// A handler's payload: decoded from every message with the handler's codec.
///
/// The route builders bound the payload with this rather than with `DeserializeOwned`, so that a
/// payload that cannot be decoded is reported in these words, on the payload's type, instead of as
/// serde's `for<'de> Deserialize<'de>` under a path private to the derive.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be decoded as a message payload",
    label = "not `Deserialize`",
    note = "a handler's first parameter is its payload, decoded from each message: derive `Deserialize` for `{Self}` (`#[derive(Deserialize)]`), or mark the parameter `#[extract]` if it is an extractor"
)]
pub trait Payload: DeserializeOwned {}

#[diagnostic::do_not_recommend]
impl<T: DeserializeOwned> Payload for T {}
