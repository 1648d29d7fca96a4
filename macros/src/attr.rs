//! Parsing `key = value` attribute arguments, shared by the three macros.
//!
//! Each macro declares its keys with `syn::custom_keyword!` and dispatches on them with
//! `lookahead1()`, so an unknown key is reported with the list of the expected ones. A [`Slot`]
//! holds one key's value and reports a second occurrence. [`parse_entries`] keeps going after a
//! malformed entry, so that every mistake in one attribute is reported in one compile.

use std::str::FromStr;

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::parse::{ParseStream, Parser};
use syn::{LitInt, LitStr, Token};

use crate::errors::Errors;

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

/// An integer literal, possibly negative: `key = 10`.
pub(crate) fn integer<N>(input: ParseStream<'_>, key: &str) -> syn::Result<(N, Span)>
where
    N: FromStr,
    N::Err: std::fmt::Display,
{
    let minus: Option<Token![-]> = input.parse()?;
    if !input.peek(LitInt) {
        return Err(input.error(format_args!("`{key}` takes an integer: `{key} = 8`")));
    }
    let lit: LitInt = input.parse()?;
    let text = match minus {
        Some(_) => format!("-{}", lit.base10_digits()),
        None => lit.base10_digits().to_owned(),
    };
    let span = minus.map_or(lit.span(), |m| m.span);
    let value =
        text.parse::<N>().map_err(|error| syn::Error::new(span, format_args!("invalid `{key}`: {error}")))?;
    if !lit.suffix().is_empty() {
        return Err(syn::Error::new(
            lit.span(),
            format_args!("`{key}` takes a plain integer, without a suffix"),
        ));
    }
    Ok((value, span))
}
