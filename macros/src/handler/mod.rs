//! `#[millstream::handler]`: parse → validate → expand.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

use crate::errors::Errors;

/// The attribute's output: the fn unchanged, then its registration, or the errors.
pub(crate) fn handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse::args(attr, &mut errors);
    let item = parse::item(item);
    let (item, handler) = validate::validate(args, item, &mut errors);
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
