use millstream::prelude::*;
struct OrderPlaced {
    id: u64,
}
#[automatically_derived]
impl ::millstream::__private::Topic for OrderPlaced {
    const NAME: &'static str = "orders.placed";
}
struct InvoiceIssued {
    order_id: u64,
}
#[automatically_derived]
impl ::millstream::__private::Topic for InvoiceIssued {
    const NAME: &'static str = "invoices.issued";
}
struct Prices;
#[automatically_derived]
impl ::core::clone::Clone for Prices {
    #[inline]
    fn clone(&self) -> Prices {
        Prices
    }
}
async fn bill(
    order: OrderPlaced,
    State(_prices): State<Prices>,
) -> Result<InvoiceIssued> {
    Ok(InvoiceIssued {
        order_id: order.id,
    })
}
const _: () = {
    /// The `#[millstream::handler]` registration of [`bill`].
    struct BillHandler;
    #[automatically_derived]
    impl ::millstream::__private::HandlerDef for BillHandler {
        const INFO: ::millstream::__private::HandlerInfo = ::millstream::__private::HandlerInfo {
            name: "macrotest005::bill",
            fn_name: "bill",
            topic: <OrderPlaced as ::millstream::__private::Topic>::NAME,
            group: ::core::option::Option::Some("billing"),
            publish: ::core::option::Option::None,
            concurrency: 4,
            order_by_key: false,
            retry_topics: &[],
            dead_letter: ::core::option::Option::None,
            payload: ::core::option::Option::Some("OrderPlaced"),
            output: ::core::option::Option::Some("InvoiceIssued"),
            service: ::core::option::Option::None,
            pubsub: ::core::option::Option::None,
            role: ::millstream::__private::Role::Handler,
            module_path: "macrotest005",
            file: "/tmp/millstream-macros-expand/handler.rs",
            line: 18u32,
        };
        fn route() -> ::millstream::__private::Route {
            let route = ::millstream::__private::payload_route_2::<
                _,
                _,
                Result<InvoiceIssued>,
                InvoiceIssued,
                ::millstream::__private::ErrorOf<Result<InvoiceIssued>>,
                OrderPlaced,
                State<Prices>,
            >(
                Self::INFO.name,
                Self::INFO.topic,
                bill,
                {
                    use ::millstream::__private::FromNamedCodec as _;
                    use ::millstream::__private::DefaultCodec as _;
                    (&&::millstream::__private::CodecOf::<OrderPlaced>::new()).codec()
                },
            );
            route
        }
        fn handler_type() -> ::core::any::TypeId {
            ::millstream::__private::type_id_of_val(&bill)
        }
        fn payload_type() -> ::core::option::Option<::core::any::TypeId> {
            ::core::option::Option::Some(::core::any::TypeId::of::<OrderPlaced>())
        }
        fn payload_schema() -> ::core::option::Option<::millstream::__private::Value> {
            use ::millstream::__private::FromJsonSchema as _;
            use ::millstream::__private::NoSchema as _;
            (&&::millstream::__private::SchemaOf::<OrderPlaced>::new()).schema()
        }
        fn output_schema() -> ::core::option::Option<::millstream::__private::Value> {
            use ::millstream::__private::FromJsonSchema as _;
            use ::millstream::__private::NoSchema as _;
            (&&::millstream::__private::SchemaOf::<InvoiceIssued>::new()).schema()
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
        ::millstream::__private::HandlerDescriptor::of::<BillHandler>()
    };
};
fn main() {}
