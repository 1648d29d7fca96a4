//! `#[middleware(..)]`: `async fn name(message: Message, next: Next) -> HandlerResult`.
//!
//! The shape is checked here; the types (`Message`, `Next`, `HandlerResult`) by the compiler,
//! through bounds of the runtime helper written with the user's type tokens.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::{FnArg, LitStr, Type};

use super::parse::{Args, Item};
use crate::errors::Errors;
use crate::scope;

/// A checked middleware fn.
pub(crate) struct MiddlewareFn {
    pub(crate) ident: syn::Ident,
    pub(crate) message: Type,
    pub(crate) next: Type,
    pub(crate) output: Type,
    pub(crate) priority: Option<i32>,
    pub(crate) name: Option<LitStr>,
    pub(crate) service: Option<LitStr>,
    pub(crate) krate: Option<syn::Path>,
}

const SHAPE: &str = "a middleware is `async fn name(message: Message, next: Next) -> HandlerResult`";

/// Checks the fn and the keys; returns the fn to emit and, if all is well, the middleware.
pub(crate) fn validate(
    mut args: Args,
    item: Item,
    errors: &mut Errors,
) -> (TokenStream, Option<MiddlewareFn>) {
    let item = match item {
        Item::Fn(item) => *item,
        Item::Other(tokens) => {
            let span = tokens.clone().into_iter().next().map_or(Span::call_site(), |t| t.span());
            errors.on(span, format_args!("`#[millstream::middleware]` goes on an async fn: {SHAPE}"));
            return (tokens, None);
        }
    };
    let sig = &item.sig;
    if sig.asyncness.is_none() {
        errors.at(sig.fn_token, format_args!("`#[millstream::middleware]` needs an async fn: {SHAPE}"));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.at(unsafety, "a middleware cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        errors.at(abi, "a middleware cannot have an `extern` ABI");
    }
    if !sig.generics.params.is_empty() {
        errors.at(&sig.generics, "a middleware cannot be generic");
    } else if let Some(where_clause) = &sig.generics.where_clause {
        errors.at(where_clause, "a middleware cannot have a `where` clause");
    }
    scope::require_free_fn(sig, "middleware", errors);
    let mut types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                errors.at(receiver, "a middleware cannot take `self`: make it a free fn")
            }
            FnArg::Typed(param) => types.push((*param.ty).clone()),
        }
    }
    if types.len() != 2 && !sig.inputs.iter().any(|i| matches!(i, FnArg::Receiver(_))) {
        let message = format!("{SHAPE}; this one takes {} parameter(s)", types.len());
        if sig.inputs.is_empty() {
            errors.on(sig.paren_token.span.join(), message);
        } else {
            errors.at(&sig.inputs, message);
        }
    }
    let output = match &sig.output {
        syn::ReturnType::Type(_, ty) => Some((**ty).clone()),
        syn::ReturnType::Default => {
            errors.at(
                &sig.ident,
                format_args!(
                    "`{}` returns nothing; {SHAPE}, returning what `next.run(message).await` gives",
                    sig.ident
                ),
            );
            None
        }
    };
    let tokens = item.to_token_stream();
    if !errors.is_empty() {
        return (tokens, None);
    }
    let mut types = types.into_iter();
    let (Some(message), Some(next), None, Some(output)) = (types.next(), types.next(), types.next(), output)
    else {
        return (tokens, None);
    };
    let middleware = MiddlewareFn {
        ident: item.sig.ident.clone(),
        message,
        next,
        output,
        priority: args.priority.take(),
        name: args.name.take(),
        service: args.service.take(),
        krate: args.krate.take(),
    };
    (tokens, Some(middleware))
}
