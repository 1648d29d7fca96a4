//! `#[millstream::middleware]`: parse → validate → expand.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

use crate::errors::Errors;

/// The attribute's output: the fn unchanged, then its registration, or the errors.
pub(crate) fn middleware(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse::args(attr, &mut errors);
    let item = parse::item(item);
    let (item, middleware) = validate::validate(args, item, &mut errors);
    match (errors.check(), middleware) {
        (Ok(()), Some(middleware)) => {
            let registration = expand::expand(&middleware);
            quote::quote!(#item #registration)
        }
        (Err(errors), _) => quote::quote!(#item #errors),
        // `validate` returns nothing only after recording why.
        (Ok(()), None) => unreachable!("`validate` rejected the item without an error"),
    }
}
