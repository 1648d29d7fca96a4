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
    match middleware {
        Some(middleware) if errors.is_empty() => {
            let registration = expand::expand(&middleware);
            quote::quote!(#item #registration)
        }
        _ => {
            let errors = errors.into_compile_errors();
            quote::quote!(#item #errors)
        }
    }
}
