//! `#[topic(..)]`: a struct or an enum, and a usable name.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::LitStr;

use super::parse::{Args, Item};
use crate::errors::Errors;

/// A checked topic type.
pub(crate) struct TopicType {
    pub(crate) input: syn::DeriveInput,
    pub(crate) name: LitStr,
    pub(crate) krate: Option<syn::Path>,
}

/// Checks the item and the name; returns the item to emit and, if all is well, the topic.
pub(crate) fn validate(mut args: Args, item: Item, errors: &mut Errors) -> (TokenStream, Option<TopicType>) {
    let input = match item {
        Item::Type(input) => *input,
        Item::Other(tokens, span) => {
            errors.on(span, "`#[millstream::topic]` goes on a struct or an enum");
            return (tokens, None);
        }
    };
    if let syn::Data::Union(union) = &input.data {
        errors.at(union.union_token, "`#[millstream::topic]` goes on a struct or an enum, not a union");
    }
    let name = args.name.take();
    match &name {
        // A malformed name was reported already.
        None if !errors.is_empty() => {}
        None => errors.on(
            Span::call_site(),
            "`#[millstream::topic]` needs the topic's name: `#[millstream::topic(\"orders.placed\")]`",
        ),
        Some(name) if name.value().chars().any(char::is_whitespace) => {
            errors.at(name, "a topic name cannot contain whitespace");
        }
        Some(_) => {}
    }
    let tokens = input.to_token_stream();
    match name {
        Some(name) if errors.is_empty() => {
            (tokens, Some(TopicType { input, name, krate: args.krate.take() }))
        }
        _ => (tokens, None),
    }
}
