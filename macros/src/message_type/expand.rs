//! `#[command(..)]` / `#[event(..)]`: the `Topic` impl (name and identity as constants) and the
//! `Command` or `Event` impl.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};

use super::validate::MessageType;
use super::Kind;
use crate::paths::Paths;

/// The impls.
pub(crate) fn expand(checked: &MessageType) -> TokenStream {
    let paths = Paths::new(checked.krate.as_ref());
    let topic_trait = paths.topic();
    let (kind_trait, kind) = match checked.kind {
        Kind::Command => (paths.command_trait(), paths.message_kind("Command")),
        Kind::Event => (paths.event_trait(), paths.message_kind("Event")),
    };
    let message_type = paths.message_type_fn();
    let message_type_struct = paths.message_type_struct();
    let ident = &checked.input.ident;
    let topic = &checked.topic;
    let name = &checked.name;
    let version = checked.version;
    let version_text = version.to_string();
    let upcast_fn = (!checked.upcasts.is_empty()).then(|| {
        let codec = paths.codec_trait();
        let bytes = paths.bytes();
        let error = paths.error();
        let upcast = paths.upcast();
        let arms = checked.upcasts.iter().map(|entry| {
            let old = &entry.ty;
            let number = entry.version;
            let span = old
                .to_token_stream()
                .into_iter()
                .next()
                .map_or_else(proc_macro2::Span::call_site, |t| t.span());
            let call = quote_spanned! {span=> #upcast::<#old, Self, C>(codec, payload)};
            quote!(#number => ::core::option::Option::Some(#call),)
        });
        quote! {
            fn upcast<C: #codec>(
                codec: &C,
                version: u32,
                payload: &[u8],
            ) -> ::core::option::Option<::core::result::Result<#bytes, #error>> {
                match version {
                    #(#arms)*
                    _ => ::core::option::Option::None,
                }
            }
        }
    });
    // Read by the macro; named here so that rustc records it and cargo rebuilds on a change.
    let rule = checked.from_rule.then(|| {
        let variable = checked.kind.rule_variable();
        quote!(
            const _: ::core::option::Option<&str> = ::core::option_env!(#variable);
        )
    });
    quote! {
        #rule

        #[automatically_derived]
        impl #topic_trait for #ident {
            const NAME: &'static str = #topic;
            const MESSAGE_TYPE: ::core::option::Option<#message_type_struct> =
                ::core::option::Option::Some(#message_type(#kind, #name, #version, #version_text));
            #upcast_fn
        }

        #[automatically_derived]
        impl #kind_trait for #ident {}
    }
}
