//! `#[handler(..)]`: checking the fn and the keys, and deciding which parameter is the payload.
//!
//! Everything here is syntactic. Whether the types fit (the payload is `DeserializeOwned`, each
//! other parameter an extractor, the return value publishable) is left to the compiler, through
//! bounds of the runtime's helpers written with the user's own type tokens (see `expand`).

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::{FnArg, LitStr, Type};

use crate::names::tokens_text;
use crate::shared::{EXTRACTORS, MAX_PARAMS};

use super::parse::{Args, Item, TopicArg};
use super::Role;
use crate::errors::Errors;
use crate::scope;

/// A fn that passed every check, with what the expansion needs.
pub(crate) struct Handler {
    /// The fn as the user wrote it (less `#[payload]`/`#[extract]` markers).
    pub(crate) item: syn::ItemFn,
    /// The payload type, if any (always the first parameter).
    pub(crate) payload: Option<Type>,
    /// The extractor types, in order.
    pub(crate) extractors: Vec<Type>,
    /// The return type as written (`()` when there is none), or `None` when it cannot be named
    /// (`impl Trait`).
    pub(crate) output: Option<TokenStream>,
    /// The parts of the return type that are checked each on its own (see [`Returned`]).
    pub(crate) returned: Returned,
    /// Where the topic comes from.
    pub(crate) topic: Topic,
    /// Where the return values go, when set.
    pub(crate) publish: Option<TopicArg>,
    pub(crate) name: Option<LitStr>,
    pub(crate) group: Option<LitStr>,
    pub(crate) concurrency: usize,
    pub(crate) order_by_key: bool,
    /// `retry_topics`: the delays in milliseconds.
    pub(crate) retry_topics: Vec<u64>,
    pub(crate) dead_letter: Option<LitStr>,
    /// A batch handler (`batch = N`): its batch size and linger in milliseconds; `payload` is
    /// then the `T` of its `Vec<T>` parameter.
    pub(crate) batch: Option<(usize, u64)>,
    pub(crate) pubsub: Option<LitStr>,
    pub(crate) service: Option<LitStr>,
    pub(crate) codec: Option<syn::Expr>,
    pub(crate) middleware: Vec<syn::Expr>,
    pub(crate) krate: Option<syn::Path>,
    /// Which attribute declared it.
    pub(crate) role: Role,
    /// A command handler whose command is defined in another crate (`external`): its uniqueness
    /// is checked when the app is built, not by the compiler.
    pub(crate) external: bool,
    /// A saga step: the state type `S` of its `&mut Saga<S>` first parameter.
    pub(crate) saga: Option<Type>,
    /// A saga step that may begin an instance.
    pub(crate) start: bool,
    /// A saga step's instance id: this field of its message (else the correlation id).
    pub(crate) saga_id: Option<Vec<syn::Member>>,
}

/// The return type taken apart, so that what is wrong with it is reported on the part at fault:
/// the value it publishes (`Invoice` in `Result<Vec<Invoice>, E>`) and its error type (`E`).
///
/// Only the shapes a handler may return are taken apart, by their names: `Result<T, E>`,
/// `Result<T>` (an alias such as `millstream::Result`), `Option<T>`, `Vec<T>`, and in a `Result`,
/// `Option<T>`, `Vec<T>` or `()`. Any other type (`()`, a plain value, a type alias of a whole
/// return type) is checked as a whole.
#[derive(Default)]
pub(crate) struct Returned {
    /// The published value, as written; `()` in `Result<(), E>`.
    pub(crate) value: Option<Type>,
    /// The error type.
    pub(crate) error: ErrorSide,
}

/// The error type of a handler's return type.
#[derive(Default)]
pub(crate) enum ErrorSide {
    /// Written: `Result<T, E>`.
    Written(Box<Type>),
    /// Not written: `Result<T>`, an alias that names it.
    OfAlias,
    /// None, or not taken apart.
    #[default]
    None,
}

/// How the handler's topic is known.
pub(crate) enum Topic {
    /// `topic = "name"`.
    Name(LitStr),
    /// `topic = Type`, to be checked against the payload.
    Declared(Box<Type>),
    /// The payload's own `#[millstream::topic]`.
    FromPayload,
}

/// Whether a parameter was marked `#[payload]` or `#[extract]`.
enum Marker {
    Payload,
    Extract,
}

/// Checks the fn and the keys; `None` if anything is wrong (all of it recorded in `errors`).
/// Returns the fn to emit either way.
pub(crate) fn validate(
    role: Role,
    mut args: Args,
    item: Item,
    errors: &mut Errors,
) -> (TokenStream, Option<Handler>) {
    let attribute = role.attribute();
    let mut item = match item {
        Item::Fn(item) => *item,
        Item::Other(tokens) => {
            let span = tokens.clone().into_iter().next().map_or(Span::call_site(), |t| t.span());
            errors.on(
                span,
                format_args!("`{attribute}` goes on an async fn: `async fn name(payload: T, ..) -> R`"),
            );
            return (tokens, None);
        }
    };
    check_signature(&item.sig, attribute, errors);
    scope::require_free_fn(&item.sig, "handler", errors);
    let before_params = errors.len();
    let markers = strip_markers(&mut item, errors);

    // Payload or extractor, parameter by parameter (after a saga step's `&mut Saga<S>`).
    let mut payload: Option<Type> = None;
    let mut extractors = Vec::new();
    let mut typed = item.sig.inputs.iter().zip(markers).filter_map(|(input, marker)| match input {
        FnArg::Typed(param) => Some((param, marker)),
        FnArg::Receiver(_) => None,
    });
    let saga = match role {
        Role::Saga => saga_state(typed.next().map(|(param, _)| &*param.ty), &item.sig, errors),
        _ => None,
    };
    for (index, (param, marker)) in typed.enumerate() {
        let ty = (*param.ty).clone();
        let is_payload = match marker {
            Some(Marker::Payload) => true,
            Some(Marker::Extract) => false,
            None => !is_extractor(&ty),
        };
        if let Type::Reference(reference) = &ty {
            if role == Role::Saga && generic_arg(&reference.elem, "Saga").is_some() {
                errors.at(reference, "the saga comes first: move this parameter to the front");
            } else {
                errors.at(
                    reference,
                    "a handler's parameters are owned values; take the type itself, not a reference",
                );
            }
            continue;
        }
        if !is_payload {
            extractors.push(ty);
        } else if let Some(first) = &payload {
            errors.at(
                &ty,
                format_args!(
                    "`{}` would be a second payload: a handler takes one payload (`{}` here); \
                     if `{}` is an extractor (it implements `FromMessage`), mark the parameter `#[extract]`",
                    tokens_text(&ty),
                    tokens_text(first),
                    tokens_text(&ty),
                ),
            );
        } else if index > 0 && role == Role::Saga {
            errors.at(
                &ty,
                format_args!(
                    "a saga step's message comes right after the saga; move `{}` second, or mark it `#[extract]` if it is an extractor",
                    tokens_text(&ty)
                ),
            );
        } else if index > 0 {
            errors.at(
                &ty,
                format_args!(
                    "the payload must be the first parameter; move `{}` first, or mark it `#[extract]` if it is an extractor",
                    tokens_text(&ty)
                ),
            );
        } else {
            payload = Some(ty);
        }
    }
    let batch = batch_keys(role, &mut args, &mut payload, &extractors, &item.sig, errors, before_params);
    let params = item.sig.inputs.len();
    if params > MAX_PARAMS || (payload.is_none() && params > MAX_PARAMS - 1) {
        errors.at(
            &item.sig.inputs,
            format_args!(
                "a handler takes at most {} parameters ({} without a payload); group extractors into your own `FromMessage` type",
                MAX_PARAMS,
                MAX_PARAMS - 1
            ),
        );
    }

    let output = match &item.sig.output {
        syn::ReturnType::Default => Some(quote::quote!(())),
        syn::ReturnType::Type(_, ty) if contains_impl_trait(ty) => None,
        syn::ReturnType::Type(_, ty) => Some(ty.to_token_stream()),
    };
    let returned = match &item.sig.output {
        syn::ReturnType::Type(_, ty) if output.is_some() => take_apart(ty),
        _ => Returned::default(),
    };
    let returns_nothing = returns_nothing(&item.sig.output);

    // The keys that depend on the fn.
    let what = match role {
        Role::Command => "command",
        Role::Event | Role::Handler => "event",
        Role::Saga => "message",
    };
    if role == Role::Saga {
        if let Some(span) = args.topic.key_span() {
            errors.on(
                span,
                "`#[millstream::saga_handler]` reads its message type's own topic; to change it, set it on the type \
                 (`#[millstream::event(topic = \"name\")]`, `#[millstream::command(..)]` or `#[millstream::topic(\"name\")]`)",
            );
            args.topic.take();
        }
        if let Some(span) = args.publish.key_span() {
            errors.on(
                span,
                "a saga step sends through its saga (`saga.send(&command)`, `saga.publish(&event)`), \
                 committed with its state; remove `publish`",
            );
            args.publish.take();
        }
        if payload.is_none() && saga.is_some() && errors.len() == before_params {
            errors.at(
                &item.sig.ident,
                format_args!(
                    "`{}` has no message parameter: a saga step takes `&mut Saga<State>` first, then its message \
                     (a `#[millstream::event]`, `#[millstream::command]` or `#[millstream::topic]` type)",
                    item.sig.ident
                ),
            );
        }
    } else if role != Role::Handler {
        if let Some(span) = args.topic.key_span() {
            errors.on(
                span,
                format_args!(
                    "`{attribute}` reads its {what}'s own topic; to change it, set it on the type: \
                     `#[millstream::{what}(topic = \"name\")]`"
                ),
            );
            args.topic.take();
        }
        if payload.is_none() && errors.len() == before_params {
            errors.at(
                &item.sig.ident,
                format_args!(
                    "`{}` has no {what} parameter: {} {what} handler takes its {what} (a `#[millstream::{what}]` type) first",
                    item.sig.ident,
                    if role == Role::Event { "an" } else { "a" },
                ),
            );
        }
    }
    let start = args.start.key_span();
    if let (Some(span), false) = (start, role == Role::Saga) {
        errors.on(span, "`start` is a key of `#[millstream::saga_handler]` only");
    }
    if let (Some(span), false) = (args.id.key_span(), role == Role::Saga) {
        errors.on(span, "`id` is a key of `#[millstream::saga_handler]` only");
    }
    let external = args.external.key_span();
    if let (Some(span), false) = (external, role == Role::Command) {
        errors.on(span, "`external` is a key of `#[millstream::command_handler]` only");
    }
    let topic = match args.topic.take() {
        Some(TopicArg::Name(name)) => Topic::Name(name),
        Some(TopicArg::Type(ty)) => Topic::Declared(ty),
        None => {
            // Unless a parameter was rejected: it might have been meant as the payload.
            if payload.is_none() && errors.len() == before_params && role == Role::Handler {
                errors.at(
                    &item.sig.ident,
                    format_args!(
                        "`{}` has no payload parameter to take its topic from; name one: `#[millstream::handler(topic = \"name\")]`",
                        item.sig.ident
                    ),
                );
            }
            Topic::FromPayload
        }
    };
    if let (Some(span), true) = (args.publish.key_span(), returns_nothing) {
        errors.on(
            span,
            format_args!(
                "`publish` is set but `{}` returns nothing to publish; return the value to publish, or remove `publish`",
                item.sig.ident
            ),
        );
    }
    let concurrency = args.concurrency.take().unwrap_or(1);
    let order_by_key = match args.order.take() {
        None => false,
        Some(order) if order.value() == "key" => true,
        Some(order) => {
            errors.at(
                &order,
                format_args!(
                    "`order` takes \"key\" (messages with the same key in order across the lanes), not {:?}",
                    order.value()
                ),
            );
            false
        }
    };

    let tokens = item.to_token_stream();
    if !errors.is_empty() {
        return (tokens, None);
    }
    let handler = Handler {
        item,
        payload,
        extractors,
        output,
        returned,
        topic,
        publish: args.publish.take(),
        name: args.name.take(),
        group: args.group.take(),
        concurrency,
        order_by_key,
        retry_topics: args.retry_topics.take().unwrap_or_default(),
        dead_letter: args.dead_letter.take(),
        batch,
        pubsub: args.pubsub.take(),
        service: args.service.take(),
        codec: args.codec.take(),
        middleware: args.middleware.take().unwrap_or_default(),
        krate: args.krate.take(),
        role,
        external: external.is_some(),
        saga,
        start: start.is_some(),
        saga_id: args.id.take(),
    };
    (tokens, Some(handler))
}

/// The arguments a batch handler takes after its `Vec<T>`, at most (the runtime's
/// `batch_route_N` builders).
const MAX_BATCH_ARGS: usize = 3;

/// `batch = N` and `linger = ".."`: a batch handler's keys, the keys it cannot have, and its
/// `Vec<T>` parameter (`payload` becomes `T`).
fn batch_keys(
    role: Role,
    args: &mut Args,
    payload: &mut Option<Type>,
    extractors: &[Type],
    sig: &syn::Signature,
    errors: &mut Errors,
    before_params: usize,
) -> Option<(usize, u64)> {
    const SHAPE: &str =
        "a batch handler takes its messages as `Vec<T>`, first: `async fn store(orders: Vec<Order>)`";
    let (batch_span, linger_span) = (args.batch.key_span(), args.linger.key_span());
    let (size, linger) = (args.batch.take(), args.linger.take());
    let (Some(span), Some(size)) = (batch_span, size) else {
        if let Some(span) = linger_span {
            errors.on(span, "`linger` goes with `batch`: `#[millstream::handler(topic = \"t\", batch = 100, linger = \"50ms\")]`");
        }
        return None;
    };
    if role != Role::Handler {
        errors.on(
            span,
            format_args!("`batch` is a key of `#[millstream::handler]` only, not of `{}`", role.attribute()),
        );
        return None;
    }
    let excluded = [
        (
            args.concurrency.key_span(),
            "concurrency",
            "it handles one batch at a time; make batches larger instead",
        ),
        (args.order.key_span(), "order", "a batch is handled as one"),
        (args.retry_topics.key_span(), "retry_topics", "retry topics are for single messages"),
        (args.dead_letter.key_span(), "dead_letter", "retry topics are for single messages"),
        (args.middleware.key_span(), "middleware", "middleware wraps one message at a time"),
    ];
    for (key_span, key, why) in excluded {
        if let Some(key_span) = key_span {
            errors.on(key_span, format_args!("a batch handler takes no `{key}`: {why}"));
        }
    }
    if extractors.len() > MAX_BATCH_ARGS {
        errors.at(
            &extractors[MAX_BATCH_ARGS],
            format_args!("a batch handler takes at most {MAX_BATCH_ARGS} arguments after its `Vec<T>` (`State<S>`); group them into one state type"),
        );
    }
    match payload.as_ref().map(|ty| (ty, generic_arg(ty, "Vec"))) {
        Some((_, Some(inner))) => *payload = Some(inner.clone()),
        Some((ty, None)) => errors.at(ty, format_args!("`{}` is not a `Vec`: {SHAPE}", tokens_text(ty))),
        None if errors.len() == before_params => {
            errors.at(&sig.ident, format_args!("`{}` has no `Vec<T>` parameter: {SHAPE}", sig.ident))
        }
        None => {}
    }
    Some((size, linger.unwrap_or(50)))
}

/// A saga step's first parameter, `&mut Saga<S>`: its `S`.
fn saga_state(first: Option<&Type>, sig: &syn::Signature, errors: &mut Errors) -> Option<Type> {
    const SHAPE: &str =
        "a saga step takes its saga first, as `&mut Saga<State>` (`State` a `#[millstream::saga]` type): \
                         `async fn step(saga: &mut Saga<Checkout>, event: OrderPlaced)`";
    let Some(first) = first else {
        errors.at(&sig.ident, format_args!("`{}` has no parameters: {SHAPE}", sig.ident));
        return None;
    };
    let state = match first {
        Type::Reference(reference) => match generic_arg(&reference.elem, "Saga") {
            Some(state) if reference.mutability.is_some() => return Some(state.clone()),
            Some(_) => {
                errors.at(reference, "take the saga as `&mut Saga<..>`: the step changes its state");
                return None;
            }
            None => None,
        },
        _ => generic_arg(first, "Saga"),
    };
    match state {
        Some(_) => {
            errors.at(first, "take the saga by mutable reference, `&mut Saga<..>`: the store keeps it")
        }
        None => errors.at(first, SHAPE),
    }
    None
}

/// `T` in `name<T>` (the last path segment).
fn generic_arg<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    match args.args.iter().collect::<Vec<_>>().as_slice() {
        [syn::GenericArgument::Type(ty)] => Some(ty),
        _ => None,
    }
}

/// The fn's shape: async, free, not generic.
fn check_signature(sig: &syn::Signature, attribute: &str, errors: &mut Errors) {
    if sig.asyncness.is_none() {
        errors
            .at(sig.fn_token, format_args!("`{attribute}` needs an async fn: `async fn {}(..)`", sig.ident));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.at(unsafety, "a handler cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        errors.at(abi, "a handler cannot have an `extern` ABI");
    }
    if !sig.generics.params.is_empty() {
        errors.at(
            &sig.generics,
            "a handler cannot be generic: each handler is one concrete fn; write a non-generic fn that calls the generic one",
        );
    } else if let Some(where_clause) = &sig.generics.where_clause {
        errors.at(where_clause, "a handler cannot have a `where` clause");
    }
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => errors.at(
                receiver,
                "a handler cannot take `self`: make it a free fn, and reach shared values with `State<T>`",
            ),
            FnArg::Typed(param) if contains_impl_trait(&param.ty) => errors
                .at(&param.ty, "a handler cannot take `impl Trait`: that makes it generic; name the type"),
            FnArg::Typed(_) => {}
        }
    }
}

/// Removes `#[payload]` and `#[extract]` from the parameters (they are not real attributes), and
/// returns what each parameter was marked.
fn strip_markers(item: &mut syn::ItemFn, errors: &mut Errors) -> Vec<Option<Marker>> {
    let mut markers = Vec::with_capacity(item.sig.inputs.len());
    for input in &mut item.sig.inputs {
        let FnArg::Typed(param) = input else {
            markers.push(None);
            continue;
        };
        let mut marker = None;
        let mut kept = Vec::with_capacity(param.attrs.len());
        for attr in std::mem::take(&mut param.attrs) {
            let this = if attr.path().is_ident("payload") {
                Marker::Payload
            } else if attr.path().is_ident("extract") {
                Marker::Extract
            } else {
                kept.push(attr);
                continue;
            };
            if !matches!(attr.meta, syn::Meta::Path(_)) {
                errors.at(&attr, "`#[payload]` and `#[extract]` take no arguments");
            }
            if marker.is_some() {
                errors.at(&attr, "a parameter is either `#[payload]` or `#[extract]`, once");
            }
            marker = Some(this);
        }
        param.attrs = kept;
        markers.push(marker);
    }
    markers
}

/// Whether the type names a known extractor (`State<T>`, `millstream::Ctx`, ...).
fn is_extractor(ty: &Type) -> bool {
    match ty {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last().is_some_and(|segment| {
            // (Named like one, with type arguments where it takes some: a struct `Tx` of the
            // user's stays a payload; `Tx<Postgres>` is the transaction.)
            let with_args = matches!(segment.arguments, syn::PathArguments::AngleBracketed(_));
            EXTRACTORS
                .iter()
                .any(|extractor| segment.ident == extractor.name && (extractor.generics == 0 || with_args))
        }),
        Type::Paren(inner) => is_extractor(&inner.elem),
        Type::Group(inner) => is_extractor(&inner.elem),
        _ => false,
    }
}

/// The value and the error type in a return type of a known shape.
fn take_apart(ty: &Type) -> Returned {
    match ty {
        Type::Paren(inner) => return take_apart(&inner.elem),
        Type::Group(inner) => return take_apart(&inner.elem),
        _ => {}
    }
    let Some((name, args)) = generic_args(ty) else { return Returned::default() };
    match (name, args.as_slice()) {
        ("Result", [ok]) => Returned { value: Some(published_value(ok)), error: ErrorSide::OfAlias },
        ("Result", [ok, error]) => Returned {
            value: Some(published_value(ok)),
            error: ErrorSide::Written(Box::new((*error).clone())),
        },
        ("Option" | "Vec" | "Delayed", [_]) => {
            Returned { value: Some(published_value(ty)), error: ErrorSide::None }
        }
        _ => Returned::default(),
    }
}

/// `T` in `Option<T>`, `Vec<T>` and `Delayed<T>`, and in `Option<Delayed<T>>` and
/// `Vec<Delayed<T>>`; any other type as it is.
fn published_value(ty: &Type) -> Type {
    match generic_args(ty) {
        Some(("Option" | "Vec", args)) if args.len() == 1 => match generic_args(args[0]) {
            Some(("Delayed", inner)) if inner.len() == 1 => inner[0].clone(),
            _ => args[0].clone(),
        },
        Some(("Delayed", args)) if args.len() == 1 => args[0].clone(),
        _ => ty.clone(),
    }
}

/// The last segment's name and type arguments: `("Result", [T, E])` for `std::result::Result<T, E>`.
fn generic_args(ty: &Type) -> Option<(&'static str, Vec<&Type>)> {
    let Type::Path(path) = ty else { return None };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    let name = ["Result", "Option", "Vec", "Delayed"].into_iter().find(|name| last.ident == name)?;
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    let mut types = Vec::with_capacity(args.args.len());
    for arg in &args.args {
        match arg {
            syn::GenericArgument::Type(ty) => types.push(ty),
            _ => return None,
        }
    }
    Some((name, types))
}

/// `()`, nothing, or `Result<(), E>`: nothing to publish.
fn returns_nothing(output: &syn::ReturnType) -> bool {
    let syn::ReturnType::Type(_, ty) = output else { return true };
    if is_unit(ty) {
        return true;
    }
    let Type::Path(path) = &**ty else { return false };
    let Some(last) = path.path.segments.last() else { return false };
    if last.ident != "Result" {
        return false;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return false };
    matches!(args.args.first(), Some(syn::GenericArgument::Type(ok)) if is_unit(ok))
}

fn is_unit(ty: &Type) -> bool {
    matches!(ty, Type::Tuple(tuple) if tuple.elems.is_empty())
}

/// Whether `impl Trait` appears anywhere in the type.
fn contains_impl_trait(ty: &Type) -> bool {
    ty.to_token_stream()
        .into_iter()
        .any(|tree| matches!(tree, proc_macro2::TokenTree::Ident(i) if i == "impl"))
        || matches!(ty, Type::ImplTrait(_))
}
