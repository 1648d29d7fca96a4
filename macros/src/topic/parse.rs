//! `#[topic(..)]`: the name, the optional `crate = path`, and the item.

use proc_macro2::{Span, TokenStream};
use syn::parse::ParseStream;
use syn::{LitStr, Token};

use crate::attr::{self, Slot};
use crate::errors::Errors;

/// The attribute's arguments.
pub(crate) struct Args {
    /// The topic's name (the first, unnamed argument).
    pub(crate) name: Slot<LitStr>,
    pub(crate) krate: Slot<syn::Path>,
}

/// Parses `"name"` then optional `crate = path`.
pub(crate) fn args(tokens: TokenStream, errors: &mut Errors) -> Args {
    let mut args = Args { name: Slot::new("name"), krate: Slot::new("crate") };
    let mut first = true;
    attr::parse_entries(tokens, errors, |input, errors| {
        let is_first = std::mem::replace(&mut first, false);
        entry(input, is_first, &mut args, errors)
    });
    args
}

fn entry(input: ParseStream<'_>, first: bool, args: &mut Args, errors: &mut Errors) -> syn::Result<()> {
    if first {
        if input.peek(Token![crate]) && input.peek2(Token![=]) {
            return Err(input.error("the topic's name comes first: `#[millstream::topic(\"name\")]`"));
        }
        if !input.peek(LitStr) {
            return Err(
                input.error("a topic's name is a string literal: `#[millstream::topic(\"orders.placed\")]`")
            );
        }
        let name: LitStr = input.parse()?;
        if name.value().is_empty() {
            return Err(syn::Error::new(name.span(), "a topic's name cannot be empty"));
        }
        args.name.set(name.span(), name, errors);
        return Ok(());
    }
    if input.peek(Token![crate]) {
        let key: Token![crate] = input.parse()?;
        attr::eq(input, "crate")?;
        args.krate.set(key.span, input.call(syn::Path::parse_mod_style)?, errors);
        Ok(())
    } else if let Some(error) = attr::misspelled_key(input, &["crate"]) {
        Err(error)
    } else {
        Err(input.error("after the topic's name, only `crate = path` is accepted"))
    }
}

/// The item under the attribute.
pub(crate) enum Item {
    /// A struct, enum or union (only the first two are accepted).
    Type(Box<syn::DeriveInput>),
    /// Anything else, with a span to report on.
    Other(TokenStream, Span),
}

/// Reads the item.
pub(crate) fn item(tokens: TokenStream) -> Item {
    match syn::parse2::<syn::DeriveInput>(tokens.clone()) {
        Ok(input) => Item::Type(Box::new(input)),
        Err(_) => {
            let span = tokens.clone().into_iter().next().map_or(Span::call_site(), |t| t.span());
            Item::Other(tokens, span)
        }
    }
}
