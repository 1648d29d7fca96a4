//! `#[command(..)]` / `#[event(..)]`: the optional `topic`, `name`, `version` and `crate` keys.

use proc_macro2::TokenStream;
use syn::parse::ParseStream;
use syn::punctuated::Punctuated;
use syn::{LitInt, LitStr, Token};

use crate::attr::{self, Slot};
use crate::errors::Errors;

mod kw {
    syn::custom_keyword!(topic);
    syn::custom_keyword!(name);
    syn::custom_keyword!(version);
    syn::custom_keyword!(upcast);
}

/// Every key, for the "did you mean" of an unknown one.
const KEYS: &[&str] = &["topic", "name", "version", "upcast", "crate"];

/// One `N = OldType` of `upcast(..)`.
pub(crate) struct Upcast {
    pub(crate) version: u32,
    pub(crate) version_tokens: LitInt,
    pub(crate) ty: syn::Type,
}

/// The attribute's keys, each at most once.
pub(crate) struct Args {
    pub(crate) topic: Slot<LitStr>,
    pub(crate) name: Slot<LitStr>,
    pub(crate) version: Slot<(u32, proc_macro2::Span)>,
    pub(crate) upcast: Slot<Vec<Upcast>>,
    pub(crate) krate: Slot<syn::Path>,
}

/// Parses the arguments; every malformed entry is recorded in `errors`.
pub(crate) fn args(tokens: TokenStream, errors: &mut Errors) -> Args {
    let mut args = Args {
        topic: Slot::new("topic"),
        name: Slot::new("name"),
        version: Slot::new("version"),
        upcast: Slot::new("upcast"),
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
    } else if lookahead.peek(kw::upcast) {
        let key: kw::upcast = input.parse()?;
        args.upcast.set(key.span, upcasts(input)?, errors);
    } else if lookahead.peek(Token![crate]) {
        let key: Token![crate] = input.parse()?;
        attr::eq(input, "crate")?;
        args.krate.set(key.span, input.call(syn::Path::parse_mod_style)?, errors);
    } else {
        return Err(attr::unknown_key(input, lookahead, KEYS));
    }
    Ok(())
}

/// `(1 = OrderPlacedV1, 2 = OrderPlacedV2)`.
fn upcasts(input: ParseStream<'_>) -> syn::Result<Vec<Upcast>> {
    const FORM: &str = "`upcast` takes older versions and their types: `upcast(1 = OrderPlacedV1)`";
    if !input.peek(syn::token::Paren) {
        return Err(input.error(FORM));
    }
    let content;
    let parens = syn::parenthesized!(content in input);
    // Taken whole first, so that a malformed entry is reported once, not again as left over.
    let tokens: TokenStream = content.parse()?;
    if tokens.is_empty() {
        return Err(syn::Error::new(parens.span.join(), FORM));
    }
    let entries = |input: ParseStream<'_>| {
        Punctuated::<Upcast, Token![,]>::parse_terminated_with(input, |entry| {
            if !entry.peek(LitInt) {
                return Err(entry.error(FORM));
            }
            let version_tokens: LitInt = entry.parse()?;
            let version = version_tokens
                .base10_parse::<u32>()
                .ok()
                .filter(|version| *version >= 1 && version_tokens.suffix().is_empty())
                .ok_or_else(|| {
                    syn::Error::new(version_tokens.span(), "an older version is an integer of 1 or more")
                })?;
            if !entry.peek(Token![=]) {
                return Err(entry.error(FORM));
            }
            entry.parse::<Token![=]>()?;
            let ty: syn::Type = entry.parse()?;
            Ok(Upcast { version, version_tokens, ty })
        })
    };
    let entries = syn::parse::Parser::parse2(entries, tokens)?;
    Ok(entries.into_iter().collect())
}
