//! The facts the macros and the runtime must agree on, written once, here.
//!
//! A proc-macro crate can export only macros, not constants, so the runtime reads these in two
//! ways:
//!
//! - `__for_each_arity!(m)` (a hidden macro, see `lib.rs`) expands to one `m!(..)` per arity up
//!   to [`MAX_PARAMS`]; the runtime implements `Handler` with it, so the arities it implements
//!   are exactly the ones the `#[handler]` check accepts.
//! - The route builders a handler's registration calls (`runtime/src/private/route.rs`) are a
//!   committed file that [`route_builders`] writes, from the same count: a test here fails when
//!   the file differs from it, and `UPDATE_GENERATED=1` rewrites it. They are written out rather
//!   than stamped by a macro so that a bound that fails is shown as it is written there
//!   ("required by this bound in `payload_route_2`": `E1: FromMessage`), without the notes
//!   about macro expansions that a macro-made fn adds to every error.
//! - `__assert_extractors!()` (hidden too) expands to a compile-time check that every name in
//!   [`EXTRACTORS`] is a type at the runtime's root implementing `FromMessage`, so the list cannot
//!   name a type the runtime renamed or dropped.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};

/// The most parameters a handler may take: the payload and `MAX_PARAMS - 1` extractors, or
/// `MAX_PARAMS - 1` extractors without a payload.
pub(crate) const MAX_PARAMS: usize = 12;

/// A type that is an extractor by its name.
pub(crate) struct Extractor {
    /// The type's name, as the last segment of a parameter's type path.
    pub(crate) name: &'static str,
    /// How many type parameters it takes (`State<T>`: 1).
    pub(crate) generics: usize,
    /// The runtime feature it exists under, with the type argument its check uses (`Tx<DB>`
    /// takes a database, not `()`).
    pub(crate) feature: Option<(&'static str, &'static str)>,
}

/// The runtime's extractors: a parameter whose type is named like one of them is an extractor,
/// any other is the payload (`#[payload]`/`#[extract]` say otherwise).
pub(crate) const EXTRACTORS: &[Extractor] = &[
    Extractor { name: "State", generics: 1, feature: None },
    Extractor { name: "Ctx", generics: 0, feature: None },
    Extractor { name: "Metadata", generics: 0, feature: None },
    Extractor { name: "MessageId", generics: 0, feature: None },
    Extractor { name: "Bytes", generics: 0, feature: None },
    Extractor { name: "Json", generics: 1, feature: None },
    Extractor { name: "Message", generics: 0, feature: None },
    Extractor { name: "Attempt", generics: 0, feature: None },
    Extractor { name: "DeliveryInfo", generics: 0, feature: None },
    Extractor { name: "CommandBus", generics: 0, feature: None },
    Extractor { name: "EventBus", generics: 0, feature: None },
    Extractor { name: "Tx", generics: 1, feature: Some(("sqlite", "sqlx::Sqlite")) },
];

/// `m!(E1, .., EN);` for each count `N` of extractors a handler may take, from none up to
/// `MAX_PARAMS - 1`.
pub(crate) fn for_each_arity(input: TokenStream) -> TokenStream {
    let target: syn::Path = match syn::parse2(input) {
        Ok(path) => path,
        Err(error) => return error.to_compile_error(),
    };
    (0..MAX_PARAMS)
        .map(|count| {
            let params = (1..=count).map(|i| format_ident!("E{}", i));
            quote!(#target!(#(#params),*);)
        })
        .collect()
}

/// `const _: [fn(); N] = [is_extractor::<crate::State<()>>, ..];`, in the runtime.
pub(crate) fn assert_extractors(input: TokenStream) -> TokenStream {
    if !input.is_empty() {
        return syn::Error::new(Span::call_site(), "`__assert_extractors!()` takes no input")
            .to_compile_error();
    }
    let checks = EXTRACTORS.iter().map(|extractor| {
        let name = format_ident!("{}", extractor.name);
        let (cfg, generics) = match extractor.feature {
            Some((feature, arg)) => {
                let arg: TokenStream = arg.parse().expect("a type");
                (Some(quote!(#[cfg(feature = #feature)])), Some(quote!(<#arg>)))
            }
            None => {
                let args = (0..extractor.generics).map(|_| quote!(()));
                (None, (extractor.generics > 0).then(|| quote!(<#(#args),*>)))
            }
        };
        quote! {
            #cfg
            const _: () = is_extractor::<crate::#name #generics>();
        }
    });
    quote! {
        /// Every type `#[millstream::handler]` takes for an extractor by its name is one.
        const fn is_extractor<T: crate::FromMessage>() {}
        #(#checks)*
    }
}

#[cfg(test)]
/// The text of `runtime/src/private/route.rs`: a `payload_route_N` and an `extractor_route_N`
/// for every arity, as `rustfmt` lays them out.
pub(crate) fn route_builders() -> String {
    let mut out = String::from(ROUTE_BUILDERS_HEADER);
    for count in 0..MAX_PARAMS {
        let extractors: Vec<String> = (1..=count).map(|i| format!("E{i}")).collect();
        let bounds: String = extractors.iter().map(|e| format!("    {e}: FromMessage,\n")).collect();
        let with = |first: &[&str]| {
            let mut list: Vec<&str> = first.to_vec();
            list.extend(extractors.iter().map(String::as_str));
            list.join(", ")
        };
        out.push_str(&format!(
            "\n/// The [`Route`] of a handler taking the payload and {count} extractor(s).\n\
             pub fn payload_route_{arity}<{generics}>(\n{ARGS}) -> Route\nwhere\n    \
             F: Fn({params}) -> Fut + Clone + Send + Sync + 'static,\n    \
             Fut: Future<Output = R> + Send,\n    P: Payload + Send + 'static,\n{bounds}{RETURN_BOUNDS}{BODY}",
            arity = count + 1,
            generics = with(&["F", "Fut", "R", "V", "X", "P"]),
            params = with(&["P"]),
        ));
        out.push_str(&format!(
            "\n/// The [`Route`] of a handler taking {count} extractor(s) and no payload.\n\
             pub fn extractor_route_{count}<{generics}>(\n{ARGS}) -> Route\nwhere\n    \
             F: Fn({params}) -> Fut + Clone + Send + Sync + 'static,\n    \
             Fut: Future<Output = R> + Send,\n{bounds}{RETURN_BOUNDS}{BODY}",
            generics = with(&["F", "Fut", "R", "V", "X"]),
            params = with(&[]),
        ));
    }
    out
}

#[cfg(test)]
const ROUTE_BUILDERS_HEADER: &str = "\
// @generated by `millstream-macros` (`shared::route_builders`) from its `MAX_PARAMS`: do not edit.
// A test in `macros/` fails when this file differs; `UPDATE_GENERATED=1 cargo test -p
// millstream-macros` rewrites it.

//! The route builders a handler's registration calls: `payload_route_N` for a handler taking the
//! payload and `N - 1` extractors, `extractor_route_N` for one taking `N` extractors, for every
//! arity the `#[handler]` macro accepts.
//!
//! Each is a plain generic fn whose bounds name the handler's types one by one (the macro passes
//! them as explicit type arguments, with the user's tokens), so that a type that does not fit is
//! reported once, on that type, \"required by this bound in `payload_route_2`\". They are written
//! out, not stamped by a macro, so that the bound is shown as written here.
//!
//! `F` is the handler fn, `Fut` its future, `R` its return type, `V` the value it publishes and
//! `X` its error type (see `returns.rs`), `P` the payload, `E1`.. the extractors.

use std::future::Future;

use super::payload::Payload;
use super::returns::{Encoded, ErrorType, Returns, Routed};
use crate::codec::Codec;
use crate::extract::FromMessage;
use crate::router::Route;
";

#[cfg(test)]
const ARGS: &str =
    "    name: &'static str,\n    topic: &'static str,\n    handler: F,\n    codec: impl Codec + Clone,\n";

#[cfg(test)]
const RETURN_BOUNDS: &str = "    V: Encoded + Routed,\n    X: ErrorType,\n    R: Returns<V, X>,\n";

#[cfg(test)]
const BODY: &str = "{\n    Route::with_codec(name, topic, handler, codec)\n}\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_builders_file_is_generated_from_max_params() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../runtime/src/private/route.rs");
        let expected = route_builders();
        if std::env::var_os("UPDATE_GENERATED").is_some() {
            std::fs::write(path, &expected).expect("route.rs written");
            return;
        }
        let actual = std::fs::read_to_string(path).expect("runtime/src/private/route.rs");
        assert!(
            actual == expected,
            "runtime/src/private/route.rs differs from `shared::route_builders()`: run \
             `UPDATE_GENERATED=1 cargo test -p millstream-macros` to regenerate it"
        );
    }

    #[test]
    fn the_ladder_runs_from_no_extractor_to_max_params_minus_one() {
        let out = for_each_arity(quote!(ladder)).to_string();
        assert!(out.starts_with("ladder ! () ; ladder ! (E1) ;"), "{out}");
        assert_eq!(out.matches("ladder !").count(), MAX_PARAMS, "{out}");
        let last = format!("E{}", MAX_PARAMS - 1);
        assert!(out.trim_end().ends_with(&format!("{last}) ;")), "{out}");
    }
}
