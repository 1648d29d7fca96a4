use millstream::prelude::*;
use millstream::Saga;
struct OrderPlaced {
    paid: bool,
}
const _: ::core::option::Option<&str> = ::core::option::Option::None::<&'static str>;
#[automatically_derived]
impl ::millstream::__private::Topic for OrderPlaced {
    const NAME: &'static str = "events.OrderPlaced";
    const MESSAGE_TYPE: ::core::option::Option<::millstream::__private::MessageType> = ::core::option::Option::Some(
        ::millstream::__private::message_type(
            ::millstream::__private::MessageKind::Event,
            "OrderPlaced",
            1u32,
            "1",
        ),
    );
}
#[automatically_derived]
impl ::millstream::__private::Event for OrderPlaced {}
struct Checkout {
    paid: bool,
}
#[automatically_derived]
impl ::millstream::__private::SagaState for Checkout {
    const NAME: &'static str = "Checkout";
}
async fn placed(
    saga: &mut Saga<Checkout>,
    event: OrderPlaced,
    meta: Metadata,
) -> Result<()> {
    saga.paid = event.paid && meta.is_empty();
    Ok(())
}
const _: () = {
    /// The `#[millstream::saga_handler]` registration of [`placed`].
    struct PlacedHandler;
    #[automatically_derived]
    impl ::millstream::__private::HandlerDef for PlacedHandler {
        const INFO: ::millstream::__private::HandlerInfo = ::millstream::__private::HandlerInfo {
            name: "macrotest009::placed",
            fn_name: "placed",
            topic: <OrderPlaced as ::millstream::__private::Topic>::NAME,
            group: ::core::option::Option::None,
            publish: ::core::option::Option::None,
            concurrency: 1,
            order_by_key: false,
            retry_topics: &[],
            dead_letter: ::core::option::Option::None,
            payload: ::core::option::Option::Some("OrderPlaced"),
            output: ::core::option::Option::None,
            service: ::core::option::Option::None,
            pubsub: ::core::option::Option::None,
            role: ::millstream::__private::Role::SagaHandler {
                start: true,
            },
            module_path: "macrotest009",
            file: "/tmp/millstream-macros-expand/saga.rs",
            line: 16u32,
        };
        fn route() -> ::millstream::__private::Route {
            let codec = {
                use ::millstream::__private::FromNamedCodec as _;
                use ::millstream::__private::DefaultCodec as _;
                (&&::millstream::__private::CodecOf::<OrderPlaced>::new()).codec()
            };
            let route = ::millstream::__private::payload_route_3::<
                _,
                _,
                ::core::result::Result<(), ::millstream::__private::Error>,
                (),
                ::millstream::__private::Error,
                OrderPlaced,
                ::millstream::__private::SagaInput<Checkout>,
                Metadata,
            >(
                Self::INFO.name,
                Self::INFO.topic,
                __saga_step,
                ::core::clone::Clone::clone(&codec),
            );
            let route = ::millstream::__private::saga_route::<
                OrderPlaced,
                _,
            >(route, codec);
            route
        }
        fn handler_type() -> ::core::any::TypeId {
            ::millstream::__private::type_id_of_val(&placed)
        }
        fn payload_type() -> ::core::option::Option<::core::any::TypeId> {
            ::core::option::Option::Some(::core::any::TypeId::of::<OrderPlaced>())
        }
        fn payload_schema() -> ::core::option::Option<::millstream::__private::Value> {
            use ::millstream::__private::FromJsonSchema as _;
            use ::millstream::__private::NoSchema as _;
            (&&::millstream::__private::SchemaOf::<OrderPlaced>::new()).schema()
        }
        fn message_type() -> ::core::option::Option<
            ::millstream::__private::MessageType,
        > {
            <OrderPlaced as ::millstream::__private::Topic>::MESSAGE_TYPE
        }
    }
    /// The step, with its saga loaded before and committed after.
    async fn __saga_step(
        __message: OrderPlaced,
        __input: ::millstream::__private::SagaInput<Checkout>,
        __extract0: Metadata,
    ) -> ::core::result::Result<(), ::millstream::__private::Error> {
        let ::core::option::Option::Some(mut __saga) = ::millstream::__private::saga_begin::<
            Checkout,
        >(__input, true, ::core::option::Option::None)
            .await? else {
            return ::core::result::Result::Ok(());
        };
        let __returned = placed(&mut __saga, __message, __extract0).await;
        ::millstream::__private::saga_finish(__saga, __returned).await
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
        ::millstream::__private::HandlerDescriptor::of::<PlacedHandler>()
    };
};
fn main() {}
