//! `#[handler(..)]`: the generated code, from a checked [`Handler`].
//!
//! ```text
//! async fn bill(..) { .. }                      // unchanged
//! const _: () = {
//!     struct BillHandler;                        // nothing in the user's namespace
//!     impl HandlerDef for BillHandler { .. }     // the compile-time facts and the route builder
//!     register_handler!(BillHandler);            // the collector's one static entry
//! };
//! ```
//!
//! The route builder calls a runtime helper with the handler's parameter and return types as
//! explicit type arguments, written with the user's tokens: when a type does not fit, the error
//! points at it, and it is reported once. The return type comes with its parts: the value it
//! publishes and its error type, each checked on its own (`validate::Returned`), or `Whole` for
//! a part that is not taken apart.

use proc_macro2::{Literal, TokenStream};
use quote::{quote, quote_spanned};

use super::parse::TopicArg;
use super::validate::{ErrorSide, Handler, Topic};
use super::Role;
use crate::names::{ident_text, tokens_text};
use crate::paths::{respanned, struct_name, Paths};

/// The `const _: () = { .. };` block for a checked handler.
pub(crate) fn expand(handler: &Handler) -> TokenStream {
    let paths = Paths::new(handler.krate.as_ref());
    let fn_ident = &handler.item.sig.ident;
    let fn_name = ident_text(fn_ident);
    let struct_ident = struct_name(fn_ident, "Handler");
    let def = paths.handler_def();
    let info = paths.handler_info();
    let route = paths.route();
    let topic_trait = paths.topic();
    let type_id = paths.type_id();

    let name = match &handler.name {
        Some(name) => quote!(#name),
        None => paths.qualified_name(&fn_name),
    };
    let topic = match (&handler.topic, &handler.payload) {
        (Topic::Name(name), _) => quote!(#name),
        (Topic::Declared(declared), Some(payload)) => {
            let typed_topic = paths.typed_topic();
            quote!(#typed_topic::<#declared, #payload>())
        }
        (Topic::Declared(declared), None) => quote!(<#declared as #topic_trait>::NAME),
        (Topic::FromPayload, payload) => quote!(<#payload as #topic_trait>::NAME),
    };
    let publish = handler.publish.as_ref().map(|publish| match (publish, &handler.output) {
        (TopicArg::Name(name), _) => quote!(#name),
        (TopicArg::Type(declared), Some(output)) => {
            let typed_publish = paths.typed_publish();
            quote!(#typed_publish::<#declared, #output>())
        }
        (TopicArg::Type(declared), None) => quote!(<#declared as #topic_trait>::NAME),
    });
    let lit = |value: &Option<syn::LitStr>| paths.option(value.as_ref().map(|v| quote!(#v)));
    let group = lit(&handler.group);
    let pubsub = lit(&handler.pubsub);
    let service = lit(&handler.service);
    let publish = paths.option(publish);
    // The type of the values it publishes: the part taken apart, else a plain return type.
    let unit = |ty: &syn::Type| matches!(ty, syn::Type::Tuple(tuple) if tuple.elems.is_empty());
    let output_text = match (&handler.returned.value, &handler.item.sig.output) {
        (Some(value), _) if !unit(value) => Some(tokens_text(value)),
        (None, syn::ReturnType::Type(_, ty)) if !unit(ty) && handler.output.is_some() => {
            Some(tokens_text(&**ty))
        }
        _ => None,
    };
    let output_name = paths.option(output_text.map(|text| quote!(#text)));
    // The JSON Schemas of the payload and output types, where they have one.
    let output_type: Option<TokenStream> = match (&handler.returned.value, &handler.item.sig.output) {
        (Some(value), _) if !unit(value) => Some(quote!(#value)),
        (None, syn::ReturnType::Type(_, ty)) if !unit(ty) && handler.output.is_some() => Some(quote!(#ty)),
        _ => None,
    };
    let schema_fn = |name: &str, ty: Option<TokenStream>| {
        let ty = ty?;
        let name = syn::Ident::new(name, proc_macro2::Span::call_site());
        let (value, schema_of, from_json_schema, no_schema) =
            (paths.value(), paths.schema_of(), paths.json_schema_trait(), paths.no_schema());
        Some(quote! {
            fn #name() -> ::core::option::Option<#value> {
                use #from_json_schema as _;
                use #no_schema as _;
                (&&#schema_of::<#ty>::new()).schema()
            }
        })
    };
    let payload_schema = schema_fn("payload_schema", handler.payload.as_ref().map(|p| quote!(#p)));
    let output_schema = schema_fn("output_schema", output_type);
    let payload_name = paths.option(handler.payload.as_ref().map(|p| {
        let text = tokens_text(p);
        quote!(#text)
    }));
    let concurrency = Literal::usize_unsuffixed(handler.concurrency);
    let order_by_key = handler.order_by_key;
    let retry_topics = handler.retry_topics.iter().map(|ms| Literal::u64_unsuffixed(*ms));
    let retry_topics = quote!(&[#(#retry_topics),*]);
    let dead_letter = lit(&handler.dead_letter);
    let (module_path, file, line) = paths.site();

    let arity = handler.payload.iter().len() + handler.extractors.len();
    let helper = match handler.payload {
        Some(_) => paths.payload_route(arity),
        None => paths.extractor_route(arity),
    };
    let output = handler.output.clone().unwrap_or_else(|| quote!(_));
    let value = match &handler.returned.value {
        Some(value) => quote!(#value),
        None => paths.whole(),
    };
    let error = match &handler.returned.error {
        ErrorSide::Written(error) => quote!(#error),
        ErrorSide::OfAlias => paths.error_of(&output),
        ErrorSide::None => paths.whole(),
    };
    let params = handler.payload.iter().chain(&handler.extractors);
    // Without a `codec` key: the codec the payload type names (`NamedCodec`), or JSON.
    let codec = match (&handler.codec, &handler.payload) {
        (Some(codec), _) => quote!(#codec),
        (None, Some(payload)) => {
            let (codec_of, named, default) = (
                paths.private_item("CodecOf"),
                paths.private_item("FromNamedCodec"),
                paths.private_item("DefaultCodec"),
            );
            quote!({
                use #named as _;
                use #default as _;
                (&&#codec_of::<#payload>::new()).codec()
            })
        }
        (None, None) => paths.json_codec(),
    };
    let with_middleware = paths.with_middleware();
    let middleware = &handler.middleware;
    let payload_type = paths.option(handler.payload.as_ref().map(|p| quote!(#type_id::of::<#p>())));
    let option_type_id = paths.option_type(type_id.clone());
    let type_id_of_val = paths.type_id_of_val();
    let register = paths.register_handler();
    // Spanned on the fn's name: a future that is not `Send` is reported there.
    // A command or event handler's type filter upcasts with the handler's codec too.
    let typed = handler.role != Role::Handler && handler.payload.is_some();
    let (bind_codec, codec_arg) = if typed {
        (Some(quote!(let codec = #codec;)), quote!(::core::clone::Clone::clone(&codec)))
    } else {
        (None, codec.clone())
    };
    let (saga_step, build_route) = match (&handler.saga, handler.batch) {
        (Some(state), _) => saga_step(handler, &paths, state, &codec_arg),
        (None, Some((size, linger))) => {
            let batch_route = paths.private_item(&format!("batch_route_{}", 1 + handler.extractors.len()));
            let (size, linger) = (Literal::usize_unsuffixed(size), Literal::u64_unsuffixed(linger));
            (
                None,
                quote_spanned! {fn_ident.span()=>
                    #batch_route::<_, _, #output, #(#params),*>(Self::INFO.name, Self::INFO.topic, #fn_ident, #codec_arg, #size, #linger)
                },
            )
        }
        (None, None) => (
            None,
            quote_spanned! {fn_ident.span()=>
                #helper::<_, _, #output, #value, #error, #(#params),*>(Self::INFO.name, Self::INFO.topic, #fn_ident, #codec_arg)
            },
        ),
    };
    let doc = format!(" The `{}` registration of [`{fn_name}`].", handler.role.attribute());
    let role = match handler.role {
        Role::Handler => paths.role("Handler"),
        Role::Command => paths.role("CommandHandler"),
        Role::Event => paths.role("EventHandler"),
        Role::Saga => {
            let (role, start) = (paths.role("SagaHandler"), handler.start);
            quote!(#role { start: #start })
        }
    };
    // A command or event handler runs only for messages of its type; the bound on the payload
    // (`Command` or `Event`) is reported on the payload's type.
    let typed_route = match (handler.role, &handler.payload) {
        (Role::Command, Some(payload)) => {
            let command_route = paths.typed_route("command_route");
            Some(
                quote_spanned! {payload_span(payload)=> let route = #command_route::<#payload, _>(route, codec);},
            )
        }
        (Role::Saga, Some(payload)) => {
            let saga_route = paths.typed_route("saga_route");
            Some(
                quote_spanned! {payload_span(payload)=> let route = #saga_route::<#payload, _>(route, codec);},
            )
        }
        (Role::Event, Some(payload)) => {
            let event_route = paths.typed_route("event_route");
            Some(
                quote_spanned! {payload_span(payload)=> let route = #event_route::<#payload, _>(route, codec);},
            )
        }
        _ => None,
    };
    // The payload's type name, for dispatching in an event group.
    let message_type = match (handler.role, &handler.payload) {
        (Role::Handler, _) | (_, None) => None,
        (_, Some(payload)) => {
            let (option, topic_trait) = (paths.option_type(paths.message_type_struct()), paths.topic());
            Some(quote! {
                fn message_type() -> #option {
                    <#payload as #topic_trait>::MESSAGE_TYPE
                }
            })
        }
    };
    // One command, one handler: a second impl in the crate does not compile.
    let one_handler = match (handler.role, &handler.payload, handler.external) {
        (Role::Command, Some(payload), false) => {
            let one = paths.command_has_one_handler();
            Some(quote_spanned! {payload_span(payload)=>
                #[automatically_derived]
                impl #one for #payload {}
            })
        }
        _ => None,
    };

    quote! {
        const _: () = {
            #[doc = #doc]
            struct #struct_ident;

            #[automatically_derived]
            impl #def for #struct_ident {
                const INFO: #info = #info {
                    name: #name,
                    fn_name: #fn_name,
                    topic: #topic,
                    group: #group,
                    publish: #publish,
                    concurrency: #concurrency,
                    order_by_key: #order_by_key,
                    retry_topics: #retry_topics,
                    dead_letter: #dead_letter,
                    payload: #payload_name,
                    output: #output_name,
                    service: #service,
                    pubsub: #pubsub,
                    role: #role,
                    module_path: #module_path,
                    file: #file,
                    line: #line,
                };

                fn route() -> #route {
                    #bind_codec
                    let route = #build_route;
                    #typed_route
                    #(let route = #with_middleware(route, #middleware);)*
                    route
                }

                fn handler_type() -> #type_id {
                    #type_id_of_val(&#fn_ident)
                }

                fn payload_type() -> #option_type_id {
                    #payload_type
                }

                #payload_schema

                #output_schema

                #message_type
            }

            #one_handler

            #saga_step

            #register!(#struct_ident);
        };
    }
}

/// The span of a type's first token (a path type's own span covers only its start on stable).
fn payload_span(ty: &syn::Type) -> proc_macro2::Span {
    use quote::ToTokens;
    ty.to_token_stream().into_iter().next().map_or_else(proc_macro2::Span::call_site, |t| t.span())
}

/// A saga step's wrapper, an ordinary handler fn that takes `SagaInput<S>` in place of the
/// user's `&mut Saga<S>`: it loads the instance, calls the step with it, and commits what the
/// step did; and the route built on the wrapper.
fn saga_step(
    handler: &Handler,
    paths: &Paths,
    state: &syn::Type,
    codec: &TokenStream,
) -> (Option<TokenStream>, TokenStream) {
    let fn_ident = &handler.item.sig.ident;
    let payload = handler.payload.as_ref().expect("a checked saga step has a message");
    let extractors = &handler.extractors;
    let names: Vec<syn::Ident> =
        (0..extractors.len()).map(|i| syn::Ident::new(&format!("__extract{i}"), fn_ident.span())).collect();
    let (input, begin, finish, error) = (
        paths.private_item("SagaInput"),
        paths.private_item("saga_begin"),
        paths.private_item("saga_finish"),
        paths.error(),
    );
    let start = handler.start;
    // A return type that is not `()` or `Result<(), E>` is reported on it.
    let finish_span = match &handler.item.sig.output {
        syn::ReturnType::Type(_, ty) => payload_span(ty),
        syn::ReturnType::Default => fn_ident.span(),
    };
    let finish = respanned(finish, finish_span);
    // A state type that is not a `#[saga]` is reported once, on it.
    let state_span = payload_span(state);
    let begin = respanned(begin, state_span);
    // The instance's id: the `id` field of the message (spanned on it: a field the message does
    // not have is reported there), else the correlation id.
    let id = match &handler.saga_id {
        Some(fields) => {
            let span = fields.first().map_or_else(proc_macro2::Span::call_site, |f| match f {
                syn::Member::Named(ident) => ident.span(),
                syn::Member::Unnamed(index) => index.span,
            });
            quote_spanned! {span=> ::core::option::Option::Some(::std::string::ToString::to_string(&__message.#(#fields).*))}
        }
        None => quote!(::core::option::Option::None),
    };
    let begin_call = quote_spanned! {state_span=> #begin::<#state>(__input, #start, #id).await};
    let finish_call = quote_spanned! {finish_span=> #finish(__saga, __returned).await};
    let step = quote! {
        /// The step, with its saga loaded before and committed after.
        async fn __saga_step(
            __message: #payload,
            __input: #input<#state>,
            #(#names: #extractors,)*
        ) -> ::core::result::Result<(), #error> {
            let ::core::option::Option::Some(mut __saga) = #begin_call? else {
                return ::core::result::Result::Ok(());
            };
            let __returned = #fn_ident(&mut __saga, __message, #(#names),*).await;
            #finish_call
        }
    };
    let helper = paths.payload_route(1 + 1 + extractors.len());
    let route = quote_spanned! {fn_ident.span()=>
        #helper::<_, _, ::core::result::Result<(), #error>, (), #error, #payload, #input<#state>, #(#extractors),*>(
            Self::INFO.name, Self::INFO.topic, __saga_step, #codec
        )
    };
    (Some(step), route)
}
