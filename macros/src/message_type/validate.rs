//! `#[command(..)]` / `#[event(..)]`: a non-generic struct or enum, and usable names.

use proc_macro2::TokenStream;
use quote::ToTokens;

use super::parse::{Args, Upcast};
use super::Kind;
use crate::errors::Errors;
use crate::names::ident_text;
use crate::topic::Item;

/// A checked command or event type.
pub(crate) struct MessageType {
    pub(crate) kind: Kind,
    pub(crate) input: syn::DeriveInput,
    /// The topic: the `topic` key, or the naming rule's (`commands.<Type>` / `events.<Type>`).
    pub(crate) topic: String,
    /// The topic comes from the naming rule (whose variable the expansion then names, so that
    /// cargo rebuilds when it changes).
    pub(crate) from_rule: bool,
    /// The type name carried in metadata: the `name` key, or the type's name.
    pub(crate) name: String,
    pub(crate) version: u32,
    /// The upcasters of older versions.
    pub(crate) upcasts: Vec<Upcast>,
    pub(crate) krate: Option<syn::Path>,
}

/// Checks the item and the keys; returns the item to emit and, if all is well, the type.
pub(crate) fn validate(
    kind: Kind,
    mut args: Args,
    item: Item,
    errors: &mut Errors,
) -> (TokenStream, Option<MessageType>) {
    let attribute = kind.attribute();
    let input = match item {
        Item::Type(input) => *input,
        Item::Other(tokens, span) => {
            errors.on(span, format_args!("`{attribute}` goes on a struct or an enum"));
            return (tokens, None);
        }
    };
    if let syn::Data::Union(union) = &input.data {
        errors.at(union.union_token, format_args!("`{attribute}` goes on a struct or an enum, not a union"));
    }
    if !input.generics.params.is_empty() {
        errors.at(
            &input.generics,
            format_args!(
                "`{attribute}` goes on a type without generic parameters: the type's name is its identity in \
                 every message, and `{}<A>` and `{}<B>` would share it",
                input.ident, input.ident
            ),
        );
    }
    let topic = args.topic.take();
    let name = args.name.take();
    // In the order the keys are usually written.
    for (value, key) in [(&topic, "topic"), (&name, "name")] {
        if let Some(value) = value {
            check_name(value, key, errors);
        }
    }
    let name = name.map_or_else(|| ident_text(&input.ident), |name| name.value());
    let from_rule = topic.is_none();
    let topic = match topic {
        Some(topic) => topic.value(),
        None => kind.default_topic(&name, |variable| std::env::var(variable).ok()).unwrap_or_else(|error| {
            errors.on(proc_macro2::Span::call_site(), error);
            String::new()
        }),
    };
    let version = args.version.take().map_or(1, |(version, _)| version);
    let upcasts = args.upcast.take().unwrap_or_default();
    let mut seen = Vec::with_capacity(upcasts.len());
    for upcast in &upcasts {
        if upcast.version >= version {
            errors.at(
                &upcast.version_tokens,
                format_args!(
                    "an upcaster turns an older version into the current one ({version}): {} is not older{}",
                    upcast.version,
                    if version == 1 { "; set the current one with `version = N`" } else { "" }
                ),
            );
        } else if seen.contains(&upcast.version) {
            errors.at(&upcast.version_tokens, format_args!("version {} has two upcasters", upcast.version));
        }
        seen.push(upcast.version);
    }
    let tokens = input.to_token_stream();
    if !errors.is_empty() {
        return (tokens, None);
    }
    let checked =
        MessageType { kind, input, topic, from_rule, name, version, upcasts, krate: args.krate.take() };
    (tokens, Some(checked))
}

fn check_name(value: &syn::LitStr, key: &str, errors: &mut Errors) {
    if value.value().chars().any(char::is_whitespace) {
        errors.at(value, format_args!("a {key} cannot contain whitespace"));
    }
}
