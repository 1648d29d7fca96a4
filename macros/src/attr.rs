//! Parsing `key = value` attribute arguments, shared by the three macros.
//!
//! Each macro declares its keys with `syn::custom_keyword!` and dispatches on them with
//! `lookahead1()`, so an unknown key is reported with the list of the expected ones. A [`Slot`]
//! holds one key's value and reports a second occurrence. [`parse_entries`] keeps going after a
//! malformed entry, so that every mistake in one attribute is reported in one compile. A key that
//! is none of them is reported by [`unknown_key`], with the closest one when it looks misspelled.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{Lookahead1, ParseStream, Parser};
use syn::{LitInt, LitStr, Token};

use crate::errors::Errors;
use crate::suggest;

/// One key's value, kept with the span of its key.
pub(crate) struct Slot<T> {
    key: &'static str,
    value: Option<(Span, T)>,
}

impl<T> Slot<T> {
    /// An empty slot for `key`.
    pub(crate) const fn new(key: &'static str) -> Self {
        Slot { key, value: None }
    }

    /// Stores the value; a key given twice is an error on its second occurrence.
    pub(crate) fn set(&mut self, key_span: Span, value: T, errors: &mut Errors) {
        if self.value.is_some() {
            errors.on(key_span, format_args!("duplicate key `{}`", self.key));
        } else {
            self.value = Some((key_span, value));
        }
    }

    /// The span of the key, if it was given.
    pub(crate) fn key_span(&self) -> Option<Span> {
        self.value.as_ref().map(|(span, _)| *span)
    }

    /// Takes the value out.
    pub(crate) fn take(&mut self) -> Option<T> {
        self.value.take().map(|(_, value)| value)
    }
}

/// Parses comma-separated entries with `entry`, which parses one `key = value`. A malformed entry
/// is recorded and skipped up to the next top-level comma; the next entry is parsed as usual.
pub(crate) fn parse_entries(
    tokens: TokenStream,
    errors: &mut Errors,
    mut entry: impl FnMut(ParseStream<'_>, &mut Errors) -> syn::Result<()>,
) {
    let parser = |input: ParseStream<'_>| -> syn::Result<()> {
        while !input.is_empty() {
            if let Err(error) = entry(input, errors) {
                errors.push(error);
                skip_entry(input)?;
            }
            if input.is_empty() {
                break;
            }
            if let Err(error) = input.parse::<Token![,]>() {
                errors.push(error);
                skip_entry(input)?;
                let _: Option<Token![,]> = input.parse()?;
            }
        }
        Ok(())
    };
    if let Err(error) = parser.parse2(tokens) {
        errors.push(error);
    }
}

/// Moves past the rest of a malformed entry, stopping before the next top-level comma.
fn skip_entry(input: ParseStream<'_>) -> syn::Result<()> {
    input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            if matches!(&tree, TokenTree::Punct(p) if p.as_char() == ',') {
                return Ok(((), rest));
            }
            rest = next;
        }
        Ok(((), rest))
    })
}

/// Parses the `=` after a key.
pub(crate) fn eq(input: ParseStream<'_>, key: &str) -> syn::Result<()> {
    if input.peek(Token![=]) {
        input.parse::<Token![=]>().map(drop)
    } else {
        Err(input.error(format_args!("expected `=` after `{key}`")))
    }
}

/// A non-empty string literal: `key = "..."`.
pub(crate) fn string(input: ParseStream<'_>, key: &str) -> syn::Result<LitStr> {
    if !input.peek(LitStr) {
        return Err(input.error(format_args!("`{key}` takes a string literal: `{key} = \"...\"`")));
    }
    let lit: LitStr = input.parse()?;
    if lit.value().is_empty() {
        return Err(syn::Error::new(lit.span(), format_args!("`{key}` cannot be empty")));
    }
    Ok(lit)
}

/// The error for an entry that starts with none of the `keys`: "did you mean `topic`?" when the
/// name is close to one of them, the list of keys otherwise.
pub(crate) fn unknown_key(input: ParseStream<'_>, lookahead: Lookahead1<'_>, keys: &[&str]) -> syn::Error {
    if let Some(error) = misspelled_key(input, keys) {
        return error;
    }
    match input.fork().call(syn::Ident::parse_any) {
        Ok(ident) => {
            let list: Vec<String> = keys.iter().map(|key| format!("`{key}`")).collect();
            let message = format!("unknown key `{}`; expected one of: {}", ident.unraw(), list.join(", "));
            syn::Error::new(ident.span(), message)
        }
        Err(_) => lookahead.error(),
    }
}

/// "unknown key `topik`; did you mean `topic`?", when the entry starts with a name close to one
/// of the `keys`.
pub(crate) fn misspelled_key(input: ParseStream<'_>, keys: &[&str]) -> Option<syn::Error> {
    let ident = input.fork().call(syn::Ident::parse_any).ok()?;
    let typed = ident.unraw().to_string();
    let key = suggest::closest(&typed, keys)?;
    Some(syn::Error::new(ident.span(), format_args!("unknown key `{typed}`; did you mean `{key}`?")))
}

/// An integer literal, possibly negative: `key = -10`.
pub(crate) fn integer<N>(input: ParseStream<'_>, key: &str) -> syn::Result<N>
where
    N: TryFrom<i128>,
{
    let (value, tokens) = integer_literal(input, key)?;
    N::try_from(value)
        .map_err(|_| syn::Error::new_spanned(tokens, format_args!("`{key}` is out of range: `{value}`")))
}

/// An integer literal of at least 1: `key = 8`.
pub(crate) fn positive(input: ParseStream<'_>, key: &str) -> syn::Result<usize> {
    let (value, tokens) = integer_literal(input, key)?;
    if value < 1 {
        let message = format!("`{key}` must be a positive integer (1 or more), not `{value}`");
        return Err(syn::Error::new_spanned(tokens, message));
    }
    usize::try_from(value).map_err(|_| {
        syn::Error::new_spanned(tokens, format_args!("`{key}` is too large: at most {}", usize::MAX))
    })
}

/// An integer literal, possibly negative, without a suffix, with its tokens (sign included) for
/// the errors about its value.
fn integer_literal(input: ParseStream<'_>, key: &str) -> syn::Result<(i128, TokenStream)> {
    let minus: Option<Token![-]> = input.parse()?;
    if !input.peek(LitInt) {
        return Err(input.error(format_args!("`{key}` takes an integer: `{key} = 8`")));
    }
    let lit: LitInt = input.parse()?;
    if !lit.suffix().is_empty() {
        return Err(syn::Error::new(
            lit.span(),
            format_args!("`{key}` takes a plain integer, without a suffix"),
        ));
    }
    let text = match minus {
        Some(_) => format!("-{}", lit.base10_digits()),
        None => lit.base10_digits().to_owned(),
    };
    let tokens = quote::quote!(#minus #lit);
    match text.parse::<i128>() {
        Ok(value) => Ok((value, tokens)),
        Err(_) => Err(syn::Error::new_spanned(tokens, format_args!("`{key}` is out of range: `{text}`"))),
    }
}
