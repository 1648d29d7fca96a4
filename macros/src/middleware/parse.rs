//! `#[middleware(..)]`: the keys and the fn.

use proc_macro2::TokenStream;
use syn::parse::ParseStream;
use syn::{LitStr, Token};

use crate::attr::{self, Slot};
use crate::errors::Errors;

mod kw {
    syn::custom_keyword!(priority);
    syn::custom_keyword!(name);
    syn::custom_keyword!(service);
}

/// Every key, for the "did you mean" of an unknown one.
const KEYS: &[&str] = &["priority", "name", "service", "crate"];

/// The attribute's keys.
pub(crate) struct Args {
    pub(crate) priority: Slot<i32>,
    pub(crate) name: Slot<LitStr>,
    pub(crate) service: Slot<LitStr>,
    pub(crate) krate: Slot<syn::Path>,
}

/// Parses the attribute's arguments.
pub(crate) fn args(tokens: TokenStream, errors: &mut Errors) -> Args {
    let mut args = Args {
        priority: Slot::new("priority"),
        name: Slot::new("name"),
        service: Slot::new("service"),
        krate: Slot::new("crate"),
    };
    attr::parse_entries(tokens, errors, |input, errors| entry(input, &mut args, errors));
    args
}

fn entry(input: ParseStream<'_>, args: &mut Args, errors: &mut Errors) -> syn::Result<()> {
    let lookahead = input.lookahead1();
    if lookahead.peek(kw::priority) {
        let key: kw::priority = input.parse()?;
        attr::eq(input, "priority")?;
        args.priority.set(key.span, attr::integer(input, "priority")?, errors);
    } else if lookahead.peek(kw::name) {
        let key: kw::name = input.parse()?;
        attr::eq(input, "name")?;
        args.name.set(key.span, attr::string(input, "name")?, errors);
    } else if lookahead.peek(kw::service) {
        let key: kw::service = input.parse()?;
        attr::eq(input, "service")?;
        args.service.set(key.span, attr::string(input, "service")?, errors);
    } else if lookahead.peek(Token![crate]) {
        let key: Token![crate] = input.parse()?;
        attr::eq(input, "crate")?;
        args.krate.set(key.span, input.call(syn::Path::parse_mod_style)?, errors);
    } else {
        return Err(attr::unknown_key(input, lookahead, KEYS));
    }
    Ok(())
}

/// The item: a fn, or tokens emitted back as they are.
pub(crate) enum Item {
    /// It parsed as a fn.
    Fn(Box<syn::ItemFn>),
    /// It did not.
    Other(TokenStream),
}

/// Reads the item.
pub(crate) fn item(tokens: TokenStream) -> Item {
    match syn::parse2::<syn::ItemFn>(tokens.clone()) {
        Ok(item) => Item::Fn(Box::new(item)),
        Err(_) => Item::Other(tokens),
    }
}
