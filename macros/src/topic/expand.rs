//! `#[topic(..)]`: one `Topic` impl; the name is a constant.

use proc_macro2::TokenStream;
use quote::quote;

use super::validate::TopicType;
use crate::paths::Paths;

/// The `impl Topic for T`.
pub(crate) fn expand(topic: &TopicType) -> TokenStream {
    let paths = Paths::new(topic.krate.as_ref());
    let topic_trait = paths.topic();
    let ident = &topic.input.ident;
    let name = &topic.name;
    let (impl_generics, type_generics, where_clause) = topic.input.generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics #topic_trait for #ident #type_generics #where_clause {
            const NAME: &'static str = #name;
        }
    }
}
