use millstream::prelude::*;
struct Reading {
    value: f64,
}
struct Db;
#[automatically_derived]
impl ::core::clone::Clone for Db {
    #[inline]
    fn clone(&self) -> Db {
        Db
    }
}
/// A batch handler: `Vec<Reading>` is the batch, `Reading` the payload type.
async fn store(readings: Vec<Reading>, State(_db): State<Db>) -> BatchResult {
    let _ = readings.len();
    BatchResult::ok()
}
const _: () = {
    /// The `#[millstream::handler]` registration of [`store`].
    struct StoreHandler;
    #[automatically_derived]
    impl ::millstream::__private::HandlerDef for StoreHandler {
        const INFO: ::millstream::__private::HandlerInfo = ::millstream::__private::HandlerInfo {
            name: "macrotest001::store",
            fn_name: "store",
            topic: "readings",
            group: ::core::option::Option::None,
            publish: ::core::option::Option::None,
            concurrency: 1,
            order_by_key: false,
            retry_topics: &[],
            dead_letter: ::core::option::Option::None,
            payload: ::core::option::Option::Some("Reading"),
            output: ::core::option::Option::Some("BatchResult"),
            service: ::core::option::Option::None,
            pubsub: ::core::option::Option::None,
            role: ::millstream::__private::Role::Handler,
            module_path: "macrotest001",
            file: "/tmp/millstream-macros-expand/batch.rs",
            line: 12u32,
        };
        fn route() -> ::millstream::__private::Route {
            let route = ::millstream::__private::batch_route_2::<
                _,
                _,
                BatchResult,
                Reading,
                State<Db>,
            >(
                Self::INFO.name,
                Self::INFO.topic,
                store,
                {
                    use ::millstream::__private::FromNamedCodec as _;
                    use ::millstream::__private::DefaultCodec as _;
                    (&&::millstream::__private::CodecOf::<Reading>::new()).codec()
                },
                100,
                20,
            );
            route
        }
        fn handler_type() -> ::core::any::TypeId {
            ::millstream::__private::type_id_of_val(&store)
        }
        fn payload_type() -> ::core::option::Option<::core::any::TypeId> {
            ::core::option::Option::Some(::core::any::TypeId::of::<Reading>())
        }
        fn payload_schema() -> ::core::option::Option<::millstream::__private::Value> {
            use ::millstream::__private::FromJsonSchema as _;
            use ::millstream::__private::NoSchema as _;
            (&&::millstream::__private::SchemaOf::<Reading>::new()).schema()
        }
        fn output_schema() -> ::core::option::Option<::millstream::__private::Value> {
            use ::millstream::__private::FromJsonSchema as _;
            use ::millstream::__private::NoSchema as _;
            (&&::millstream::__private::SchemaOf::<BatchResult>::new()).schema()
        }
    }
    #[used]
    #[unsafe(link_section = "linkme_HANDLERS")]
    static REGISTRATION: ::millstream::__private::HandlerDescriptor = {
        #[allow(clippy::no_effect_underscore_binding)]
        unsafe fn __typecheck(_: ::millstream::__private::linkme::__private37::Void) {
            #[allow(clippy::ref_option_ref)]
            let __new = || -> fn() -> &'static ::millstream::__private::HandlerDescriptor {
                || &REGISTRATION
            };
            unsafe {
                ::millstream::__private::linkme::DistributedSlice::private_typecheck(
                    ::millstream::__private::HANDLERS,
                    __new(),
                );
            }
        }
        ::millstream::__private::HandlerDescriptor::of::<StoreHandler>()
    };
};
fn main() {}
