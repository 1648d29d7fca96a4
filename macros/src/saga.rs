//! `#[millstream::saga]`: a saga's state type. Parse (`name`, `crate`) → validate (a
//! non-generic struct or enum) → expand (the `SagaState` impl).

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::parse::ParseStream;
use syn::LitStr;

use crate::attr::{self, Slot};
use crate::errors::Errors;
use crate::names::ident_text;
use crate::paths::Paths;
use crate::topic::Item;

mod kw {
    syn::custom_keyword!(name);
}

/// Every key, for the "did you mean" of an unknown one.
const KEYS: &[&str] = &["name", "crate"];

struct Args {
    name: Slot<LitStr>,
    krate: Slot<syn::Path>,
}

fn entry(input: ParseStream<'_>, args: &mut Args, errors: &mut Errors) -> syn::Result<()> {
    let lookahead = input.lookahead1();
    if lookahead.peek(kw::name) {
        let key: kw::name = input.parse()?;
        attr::eq(input, "name")?;
        args.name.set(key.span, attr::string(input, "name")?, errors);
    } else if lookahead.peek(syn::Token![crate]) {
        let key: syn::Token![crate] = input.parse()?;
        attr::eq(input, "crate")?;
        args.krate.set(key.span, input.call(syn::Path::parse_mod_style)?, errors);
    } else {
        return Err(attr::unknown_key(input, lookahead, KEYS));
    }
    Ok(())
}

/// The attribute's output: the type unchanged, then its `SagaState` impl, or the errors.
pub(crate) fn saga(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let mut args = Args { name: Slot::new("name"), krate: Slot::new("crate") };
    attr::parse_entries(attr, &mut errors, |input, errors| entry(input, &mut args, errors));
    let input = match crate::topic::parse_item(item) {
        Item::Type(input) => *input,
        Item::Other(tokens, span) => {
            errors.on(span, "`#[millstream::saga]` goes on a struct or an enum: the saga's state");
            let errors = errors.check().err();
            return quote!(#tokens #errors);
        }
    };
    if let syn::Data::Union(union) = &input.data {
        errors.at(union.union_token, "`#[millstream::saga]` goes on a struct or an enum, not a union");
    }
    if !input.generics.params.is_empty() {
        errors.at(
            &input.generics,
            format_args!(
                "`#[millstream::saga]` goes on a type without generic parameters: the saga's name keys its \
                 instances in the store, and `{}<A>` and `{}<B>` would share it",
                input.ident, input.ident
            ),
        );
    }
    let name = args.name.take();
    if let Some(name) = &name {
        if name.value().is_empty() || name.value().chars().any(char::is_whitespace) {
            errors.at(name, "a saga's name is not empty and has no whitespace");
        }
    }
    let tokens = input.to_token_stream();
    if let Err(errors) = errors.check() {
        return quote!(#tokens #errors);
    }
    let paths = Paths::new(args.krate.take().as_ref());
    let state_trait = paths.saga_state();
    let ident = &input.ident;
    let name = name.map_or_else(|| ident_text(ident), |name| name.value());
    quote! {
        #tokens

        #[automatically_derived]
        impl #state_trait for #ident {
            const NAME: &'static str = #name;
        }
    }
}
