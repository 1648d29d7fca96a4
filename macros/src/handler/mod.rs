//! `#[millstream::handler]`: parse → validate → expand.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

use crate::errors::Errors;

/// Which attribute declared the handler.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `#[millstream::handler]`.
    Handler,
    /// `#[millstream::command_handler]`.
    Command,
    /// `#[millstream::event_handler]`.
    Event,
    /// `#[millstream::saga_handler]`.
    Saga,
}

impl Role {
    /// The attribute, for messages.
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            Role::Handler => "#[millstream::handler]",
            Role::Command => "#[millstream::command_handler]",
            Role::Event => "#[millstream::event_handler]",
            Role::Saga => "#[millstream::saga_handler]",
        }
    }
}

/// The attribute's output: the fn unchanged, then its registration, or the errors.
pub(crate) fn handler(role: Role, attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse::args(attr, &mut errors);
    let item = parse::item(item);
    let (item, handler) = validate::validate(role, args, item, &mut errors);
    match (errors.check(), handler) {
        (Ok(()), Some(handler)) => {
            let registration = expand::expand(&handler);
            quote::quote!(#item #registration)
        }
        (Err(errors), _) => quote::quote!(#item #errors),
        // `validate` returns nothing only after recording why.
        (Ok(()), None) => unreachable!("`validate` rejected the item without an error"),
    }
}
