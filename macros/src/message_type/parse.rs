//! `#[command(..)]` / `#[event(..)]`: the optional `topic`, `name`, `version` and `crate` keys.

use proc_macro2::TokenStream;
use syn::parse::ParseStream;
use syn::{LitStr, Token};

use crate::attr::{self, Slot};
use crate::errors::Errors;

mod kw {
    syn::custom_keyword!(topic);
    syn::custom_keyword!(name);
    syn::custom_keyword!(version);
}

/// Every key, for the "did you mean" of an unknown one.
const KEYS: &[&str] = &["topic", "name", "version", "crate"];

/// The attribute's keys, each at most once.
pub(crate) struct Args {
    pub(crate) topic: Slot<LitStr>,
    pub(crate) name: Slot<LitStr>,
    pub(crate) version: Slot<(u32, proc_macro2::Span)>,
    pub(crate) krate: Slot<syn::Path>,
}

/// Parses the arguments; every malformed entry is recorded in `errors`.
pub(crate) fn args(tokens: TokenStream, errors: &mut Errors) -> Args {
    let mut args = Args {
        topic: Slot::new("topic"),
        name: Slot::new("name"),
        version: Slot::new("version"),
        krate: Slot::new("crate"),
    };
    attr::parse_entries(tokens, errors, |input, errors| entry(input, &mut args, errors));
    args
}

fn entry(input: ParseStream<'_>, args: &mut Args, errors: &mut Errors) -> syn::Result<()> {
    let lookahead = input.lookahead1();
    if lookahead.peek(kw::topic) {
        let key: kw::topic = input.parse()?;
        attr::eq(input, "topic")?;
        args.topic.set(key.span, attr::string(input, "topic")?, errors);
    } else if lookahead.peek(kw::name) {
        let key: kw::name = input.parse()?;
        attr::eq(input, "name")?;
        args.name.set(key.span, attr::string(input, "name")?, errors);
    } else if lookahead.peek(kw::version) {
        let key: kw::version = input.parse()?;
        attr::eq(input, "version")?;
        let span = input.span();
        let version = attr::positive(input, "version")?;
        let version = u32::try_from(version).map_err(|_| {
            syn::Error::new(span, format_args!("`version` is too large: at most {}", u32::MAX))
        })?;
        args.version.set(key.span, (version, span), errors);
    } else if lookahead.peek(Token![crate]) {
        let key: Token![crate] = input.parse()?;
        attr::eq(input, "crate")?;
        args.krate.set(key.span, input.call(syn::Path::parse_mod_style)?, errors);
    } else {
        return Err(attr::unknown_key(input, lookahead, KEYS));
    }
    Ok(())
}
