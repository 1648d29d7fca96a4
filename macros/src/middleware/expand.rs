//! `#[middleware(..)]`: a struct implementing `MiddlewareDef`, and its registry entry.

use proc_macro2::TokenStream;
use quote::quote;

use super::validate::MiddlewareFn;
use crate::names::ident_text;
use crate::paths::{struct_name, Paths};

/// The `const _: () = { .. };` block for a checked middleware.
pub(crate) fn expand(middleware: &MiddlewareFn) -> TokenStream {
    let paths = Paths::new(middleware.krate.as_ref());
    let fn_ident = &middleware.ident;
    let fn_name = ident_text(fn_ident);
    let struct_ident = struct_name(fn_ident, "Middleware");
    let def = paths.middleware_def();
    let info = paths.middleware_info();
    let arc = paths.arc();
    let middleware_trait = paths.middleware_trait();
    let middleware_fn = paths.middleware_fn();
    let register = paths.register_middleware();
    let name = match &middleware.name {
        Some(name) => quote!(#name),
        None => paths.qualified_name(&fn_name),
    };
    let priority = paths.option(middleware.priority.map(|p| {
        let p = proc_macro2::Literal::i32_unsuffixed(p);
        quote!(#p)
    }));
    let service = paths.option(middleware.service.as_ref().map(|s| quote!(#s)));
    let (module_path, file, line) = paths.site();
    let (message, next, output) = (&middleware.message, &middleware.next, &middleware.output);
    let doc = format!(" The `#[millstream::middleware]` registration of [`{fn_name}`].");

    quote! {
        const _: () = {
            #[doc = #doc]
            struct #struct_ident;

            #[automatically_derived]
            impl #def for #struct_ident {
                const INFO: #info = #info {
                    name: #name,
                    priority: #priority,
                    service: #service,
                    module_path: #module_path,
                    file: #file,
                    line: #line,
                };

                fn layer() -> #arc<dyn #middleware_trait> {
                    #middleware_fn::<_, _, #message, #next, #output>(#fn_ident)
                }
            }

            #register!(#struct_ident);
        };
    }
}
