//! `#[millstream::command]` and `#[millstream::event]`: parse → validate → expand.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

use crate::errors::Errors;

/// Which attribute: the kind of message the type is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Command,
    Event,
}

impl Kind {
    /// The attribute's name, for messages.
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            Kind::Command => "#[millstream::command]",
            Kind::Event => "#[millstream::event]",
        }
    }

    /// The default topic's prefix: `commands.` or `events.`.
    pub(crate) fn topic_prefix(self) -> &'static str {
        match self {
            Kind::Command => "commands.",
            Kind::Event => "events.",
        }
    }
}

/// The attribute's output: the type unchanged, then its impls, or the errors.
pub(crate) fn message_type(kind: Kind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse::args(attr, &mut errors);
    let item = crate::topic::parse_item(item);
    let (item, checked) = validate::validate(kind, args, item, &mut errors);
    match (errors.check(), checked) {
        (Ok(()), Some(checked)) => {
            let implementation = expand::expand(&checked);
            quote::quote!(#item #implementation)
        }
        (Err(errors), _) => quote::quote!(#item #errors),
        // `validate` returns nothing only after recording why.
        (Ok(()), None) => unreachable!("`validate` rejected the item without an error"),
    }
}
