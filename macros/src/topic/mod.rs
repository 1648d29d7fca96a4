//! `#[millstream::topic("name")]`: parse → validate → expand.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

use crate::errors::Errors;

/// The attribute's output: the type unchanged, then its `Topic` impl, or the errors.
pub(crate) fn topic(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse::args(attr, &mut errors);
    let item = parse::item(item);
    let (item, topic) = validate::validate(args, item, &mut errors);
    match topic {
        Some(topic) if errors.is_empty() => {
            let implementation = expand::expand(&topic);
            quote::quote!(#item #implementation)
        }
        _ => {
            let errors = errors.into_compile_errors();
            quote::quote!(#item #errors)
        }
    }
}
