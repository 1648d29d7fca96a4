//! Every path the generated code uses, in one place.
//!
//! Generated code names only `::millstream::__private::*` (or `<crate>::__private::*` under
//! `crate = path`) and `::core::*`, never anything the user imported. The user's own types and fns
//! are the only other names in it, written with the user's own tokens.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};

/// The paths into the runtime, rooted at `::millstream` or at the `crate = path` override.
pub(crate) struct Paths {
    private: TokenStream,
}

impl Paths {
    /// Paths rooted at `krate`, or at `::millstream`.
    pub(crate) fn new(krate: Option<&syn::Path>) -> Self {
        let private = match krate {
            Some(path) => quote!(#path::__private),
            None => quote!(::millstream::__private),
        };
        Paths { private }
    }

    fn private(&self, item: &str) -> TokenStream {
        let private = &self.private;
        let item = syn::Ident::new(item, Span::call_site());
        quote!(#private::#item)
    }

    // The runtime, through `__private`.

    /// The trait a generated handler struct implements.
    pub(crate) fn handler_def(&self) -> TokenStream {
        self.private("HandlerDef")
    }

    /// The compile-time facts of a handler.
    pub(crate) fn handler_info(&self) -> TokenStream {
        self.private("HandlerInfo")
    }

    /// The trait a generated middleware struct implements.
    pub(crate) fn middleware_def(&self) -> TokenStream {
        self.private("MiddlewareDef")
    }

    /// The compile-time facts of a middleware.
    pub(crate) fn middleware_info(&self) -> TokenStream {
        self.private("MiddlewareInfo")
    }

    /// The middleware trait object.
    pub(crate) fn middleware_trait(&self) -> TokenStream {
        self.private("Middleware")
    }

    /// `Arc`, for the shared middleware.
    pub(crate) fn arc(&self) -> TokenStream {
        self.private("Arc")
    }

    /// A handler and its wiring.
    pub(crate) fn route(&self) -> TokenStream {
        self.private("Route")
    }

    /// The typed-topic trait.
    pub(crate) fn topic(&self) -> TokenStream {
        self.private("Topic")
    }

    /// The command marker trait.
    pub(crate) fn command_trait(&self) -> TokenStream {
        self.private("Command")
    }

    /// The event marker trait.
    pub(crate) fn event_trait(&self) -> TokenStream {
        self.private("Event")
    }

    /// `MessageKind::Command` / `MessageKind::Event`.
    pub(crate) fn message_kind(&self, variant: &str) -> TokenStream {
        let kind = self.private("MessageKind");
        let variant = syn::Ident::new(variant, Span::call_site());
        quote!(#kind::#variant)
    }

    /// The const fn building a command's or event's identity.
    pub(crate) fn message_type_fn(&self) -> TokenStream {
        self.private("message_type")
    }

    /// The identity's type.
    pub(crate) fn message_type_struct(&self) -> TokenStream {
        self.private("MessageType")
    }

    /// `command_route::<C>(route)` / `event_route::<E>(route)`.
    pub(crate) fn typed_route(&self, role_fn: &str) -> TokenStream {
        self.private(role_fn)
    }

    /// The trait a `#[saga]` type implements.
    pub(crate) fn saga_state(&self) -> TokenStream {
        self.private("SagaState")
    }

    /// An item of `__private` by name: `saga_begin`, `saga_finish`, `SagaInput`, `CodecOf`, ..
    pub(crate) fn private_item(&self, item: &str) -> TokenStream {
        self.private(item)
    }

    /// The trait a command handler implements for its command.
    pub(crate) fn command_has_one_handler(&self) -> TokenStream {
        self.private("CommandHasOneHandler")
    }

    /// `Role::Handler` and the others.
    pub(crate) fn role(&self, variant: &str) -> TokenStream {
        let role = self.private("Role");
        let variant = syn::Ident::new(variant, Span::call_site());
        quote!(#role::#variant)
    }

    /// The codec trait.
    pub(crate) fn codec_trait(&self) -> TokenStream {
        self.private("Codec")
    }

    /// `Bytes`.
    pub(crate) fn bytes(&self) -> TokenStream {
        self.private("Bytes")
    }

    /// `millstream::Error`.
    pub(crate) fn error(&self) -> TokenStream {
        self.private("Error")
    }

    /// `upcast::<Old, New, C>(codec, payload)`.
    pub(crate) fn upcast(&self) -> TokenStream {
        self.private("upcast")
    }

    /// `serde_json::Value`.
    pub(crate) fn value(&self) -> TokenStream {
        self.private("Value")
    }

    /// `SchemaOf::<T>`.
    pub(crate) fn schema_of(&self) -> TokenStream {
        self.private("SchemaOf")
    }

    /// The trait giving a `JsonSchema` type's schema.
    pub(crate) fn json_schema_trait(&self) -> TokenStream {
        self.private("FromJsonSchema")
    }

    /// The trait giving any other type none.
    pub(crate) fn no_schema(&self) -> TokenStream {
        self.private("NoSchema")
    }

    /// The default codec.
    pub(crate) fn json_codec(&self) -> TokenStream {
        self.private("JsonCodec")
    }

    /// The route builder of a handler with a payload and `arity` parameters in all.
    pub(crate) fn payload_route(&self, arity: usize) -> TokenStream {
        self.private(&format!("payload_route_{arity}"))
    }

    /// The route builder of a handler with `arity` extractor parameters.
    pub(crate) fn extractor_route(&self, arity: usize) -> TokenStream {
        self.private(&format!("extractor_route_{arity}"))
    }

    /// The marker for a part of the return type that is not checked on its own.
    pub(crate) fn whole(&self) -> TokenStream {
        self.private("Whole")
    }

    /// `ErrorOf<R>`: the error type of `R`, a `Result` alias that does not write it. The tokens
    /// around `output` are spanned on its first and last tokens, so that an error about the type
    /// points at the whole return type.
    pub(crate) fn error_of(&self, output: &TokenStream) -> TokenStream {
        let mut tokens = output.clone().into_iter();
        let first = tokens.next().map_or_else(Span::call_site, |token| token.span());
        let last = tokens.last().map_or(first, |token| token.span());
        let error_of: TokenStream = self
            .private("ErrorOf")
            .into_iter()
            .map(|mut token| {
                token.set_span(first);
                token
            })
            .collect();
        let open = quote_spanned!(first=> <);
        let close = quote_spanned!(last=> >);
        quote!(#error_of #open #output #close)
    }

    /// `typed_topic::<Declared, Payload>()`.
    pub(crate) fn typed_topic(&self) -> TokenStream {
        self.private("typed_topic")
    }

    /// `typed_publish::<Declared, Return>()`.
    pub(crate) fn typed_publish(&self) -> TokenStream {
        self.private("typed_publish")
    }

    /// `with_middleware(route, layer)`.
    pub(crate) fn with_middleware(&self) -> TokenStream {
        self.private("with_middleware")
    }

    /// `middleware_fn::<..>(f)`.
    pub(crate) fn middleware_fn(&self) -> TokenStream {
        self.private("middleware_fn")
    }

    /// `type_id_of_val(&f)`.
    pub(crate) fn type_id_of_val(&self) -> TokenStream {
        self.private("type_id_of_val")
    }

    /// The collector's registration macro for handlers.
    pub(crate) fn register_handler(&self) -> TokenStream {
        self.private("register_handler")
    }

    /// The collector's registration macro for middleware.
    pub(crate) fn register_middleware(&self) -> TokenStream {
        self.private("register_middleware")
    }

    // `::core`.

    /// `::core::option::Option::Some(value)`, or `None`.
    pub(crate) fn option(&self, value: Option<TokenStream>) -> TokenStream {
        match value {
            Some(value) => quote!(::core::option::Option::Some(#value)),
            None => quote!(::core::option::Option::None),
        }
    }

    /// `::core::option::Option<T>`.
    pub(crate) fn option_type(&self, inner: TokenStream) -> TokenStream {
        quote!(::core::option::Option<#inner>)
    }

    /// `::core::any::TypeId`.
    pub(crate) fn type_id(&self) -> TokenStream {
        quote!(::core::any::TypeId)
    }

    /// The declaration site: `module_path`, `file` and `line` field values.
    pub(crate) fn site(&self) -> (TokenStream, TokenStream, TokenStream) {
        (quote!(::core::module_path!()), quote!(::core::file!()), quote!(::core::line!()))
    }

    /// `module_path::name` as a `&'static str`.
    pub(crate) fn qualified_name(&self, name: &str) -> TokenStream {
        let suffix = format!("::{name}");
        quote!(::core::concat!(::core::module_path!(), #suffix))
    }
}

/// The generated struct's name: `bill_customer` → `BillCustomerHandler`.
pub(crate) fn struct_name(fn_name: &syn::Ident, suffix: &str) -> syn::Ident {
    let name = fn_name.to_string();
    let name = name.strip_prefix("r#").unwrap_or(&name);
    let mut camel = String::with_capacity(name.len() + suffix.len());
    for part in name.split('_').filter(|p| !p.is_empty()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            camel.extend(first.to_uppercase());
            camel.push_str(chars.as_str());
        }
    }
    if !camel.ends_with(suffix) {
        camel.push_str(suffix);
    }
    format_ident!("{}", camel, span = fn_name.span())
}

/// `tokens` with every token spanned at `span` (a runtime path whose failed bound is to be
/// reported on the user's token).
pub(crate) fn respanned(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            token.set_span(span);
            token
        })
        .collect()
}
