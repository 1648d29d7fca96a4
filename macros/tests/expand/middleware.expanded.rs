use millstream::prelude::*;
async fn timing(message: Message, next: Next) -> HandlerResult {
    next.run(message).await
}
const _: () = {
    /// The `#[millstream::middleware]` registration of [`timing`].
    struct TimingMiddleware;
    #[automatically_derived]
    impl ::millstream::__private::MiddlewareDef for TimingMiddleware {
        const INFO: ::millstream::__private::MiddlewareInfo = ::millstream::__private::MiddlewareInfo {
            name: "macrotest007::timing",
            priority: ::core::option::Option::Some(10),
            service: ::core::option::Option::None,
            module_path: "macrotest007",
            file: "/tmp/millstream-macros-expand/middleware.rs",
            line: 3u32,
        };
        fn layer() -> ::millstream::__private::Arc<
            dyn ::millstream::__private::Middleware,
        > {
            ::millstream::__private::middleware_fn::<
                _,
                _,
                Message,
                Next,
                HandlerResult,
            >(timing)
        }
    }
    #[used]
    #[unsafe(link_section = "linkme_MIDDLEWARE")]
    static REGISTRATION: ::millstream::__private::MiddlewareDescriptor = {
        #[allow(clippy::no_effect_underscore_binding)]
        unsafe fn __typecheck(_: ::millstream::__private::linkme::__private37::Void) {
            #[allow(clippy::ref_option_ref)]
            let __new = || -> fn() -> &'static ::millstream::__private::MiddlewareDescriptor {
                || &REGISTRATION
            };
            unsafe {
                ::millstream::__private::linkme::DistributedSlice::private_typecheck(
                    ::millstream::__private::MIDDLEWARE,
                    __new(),
                );
            }
        }
        ::millstream::__private::MiddlewareDescriptor::of::<TimingMiddleware>()
    };
};
fn main() {}
