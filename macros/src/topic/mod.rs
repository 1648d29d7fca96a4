//! `#[millstream::topic("name")]`: parse → validate → expand.

mod expand;
mod parse;
mod validate;

pub(crate) use parse::{item as parse_item, Item};

use proc_macro2::TokenStream;

use crate::errors::Errors;

/// The attribute's output: the type unchanged, then its `Topic` impl, or the errors.
pub(crate) fn topic(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse::args(attr, &mut errors);
    let item = parse::item(item);
    let (item, topic) = validate::validate(args, item, &mut errors);
    match (errors.check(), topic) {
        (Ok(()), Some(topic)) => {
            let implementation = expand::expand(&topic);
            quote::quote!(#item #implementation)
        }
        (Err(errors), _) => quote::quote!(#item #errors),
        // `validate` returns nothing only after recording why.
        (Ok(()), None) => unreachable!("`validate` rejected the item without an error"),
    }
}
