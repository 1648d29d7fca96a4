use millstream::prelude::*;
struct PlaceOrder {
    id: u64,
}
const _: ::core::option::Option<&str> = ::core::option::Option::None::<&'static str>;
#[automatically_derived]
impl ::millstream::__private::Topic for PlaceOrder {
    const NAME: &'static str = "commands.PlaceOrder";
    const MESSAGE_TYPE: ::core::option::Option<::millstream::__private::MessageType> = ::core::option::Option::Some(
        ::millstream::__private::message_type(
            ::millstream::__private::MessageKind::Command,
            "PlaceOrder",
            1u32,
            "1",
        ),
    );
}
#[automatically_derived]
impl ::millstream::__private::Command for PlaceOrder {}
struct OrderPlaced {
    id: u64,
}
#[automatically_derived]
impl ::millstream::__private::Topic for OrderPlaced {
    const NAME: &'static str = "orders";
    const MESSAGE_TYPE: ::core::option::Option<::millstream::__private::MessageType> = ::core::option::Option::Some(
        ::millstream::__private::message_type(
            ::millstream::__private::MessageKind::Event,
            "OrderPlaced",
            2u32,
            "2",
        ),
    );
}
#[automatically_derived]
impl ::millstream::__private::Event for OrderPlaced {}
async fn place(order: PlaceOrder) -> OrderPlaced {
    OrderPlaced { id: order.id }
}
const _: () = {
    /// The `#[millstream::command_handler]` registration of [`place`].
    struct PlaceHandler;
    #[automatically_derived]
    impl ::millstream::__private::HandlerDef for PlaceHandler {
        const INFO: ::millstream::__private::HandlerInfo = ::millstream::__private::HandlerInfo {
            name: "macrotest003::place",
            fn_name: "place",
            topic: <PlaceOrder as ::millstream::__private::Topic>::NAME,
            group: ::core::option::Option::None,
            publish: ::core::option::Option::None,
            concurrency: 1,
            order_by_key: false,
            retry_topics: &[],
            dead_letter: ::core::option::Option::None,
            payload: ::core::option::Option::Some("PlaceOrder"),
            output: ::core::option::Option::Some("OrderPlaced"),
            service: ::core::option::Option::None,
            pubsub: ::core::option::Option::None,
            role: ::millstream::__private::Role::CommandHandler,
            module_path: "macrotest003",
            file: "/tmp/millstream-macros-expand/cqrs.rs",
            line: 15u32,
        };
        fn route() -> ::millstream::__private::Route {
            let codec = {
                use ::millstream::__private::FromNamedCodec as _;
                use ::millstream::__private::DefaultCodec as _;
                (&&::millstream::__private::CodecOf::<PlaceOrder>::new()).codec()
            };
            let route = ::millstream::__private::payload_route_1::<
                _,
                _,
                OrderPlaced,
                ::millstream::__private::Whole,
                ::millstream::__private::Whole,
                PlaceOrder,
            >(
                Self::INFO.name,
                Self::INFO.topic,
                place,
                ::core::clone::Clone::clone(&codec),
            );
            let route = ::millstream::__private::command_route::<
                PlaceOrder,
                _,
            >(route, codec);
            route
        }
        fn handler_type() -> ::core::any::TypeId {
            ::millstream::__private::type_id_of_val(&place)
        }
        fn payload_type() -> ::core::option::Option<::core::any::TypeId> {
            ::core::option::Option::Some(::core::any::TypeId::of::<PlaceOrder>())
        }
        fn payload_schema() -> ::core::option::Option<::millstream::__private::Value> {
            use ::millstream::__private::FromJsonSchema as _;
            use ::millstream::__private::NoSchema as _;
            (&&::millstream::__private::SchemaOf::<PlaceOrder>::new()).schema()
        }
        fn output_schema() -> ::core::option::Option<::millstream::__private::Value> {
            use ::millstream::__private::FromJsonSchema as _;
            use ::millstream::__private::NoSchema as _;
            (&&::millstream::__private::SchemaOf::<OrderPlaced>::new()).schema()
        }
        fn message_type() -> ::core::option::Option<
            ::millstream::__private::MessageType,
        > {
            <PlaceOrder as ::millstream::__private::Topic>::MESSAGE_TYPE
        }
    }
    #[automatically_derived]
    impl ::millstream::__private::CommandHasOneHandler for PlaceOrder {}
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
        ::millstream::__private::HandlerDescriptor::of::<PlaceHandler>()
    };
};
async fn on_placed(event: OrderPlaced) {
    let _ = event.id;
}
const _: () = {
    /// The `#[millstream::event_handler]` registration of [`on_placed`].
    struct OnPlacedHandler;
    #[automatically_derived]
    impl ::millstream::__private::HandlerDef for OnPlacedHandler {
        const INFO: ::millstream::__private::HandlerInfo = ::millstream::__private::HandlerInfo {
            name: "macrotest003::on_placed",
            fn_name: "on_placed",
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
            role: ::millstream::__private::Role::EventHandler,
            module_path: "macrotest003",
            file: "/tmp/millstream-macros-expand/cqrs.rs",
            line: 20u32,
        };
        fn route() -> ::millstream::__private::Route {
            let codec = {
                use ::millstream::__private::FromNamedCodec as _;
                use ::millstream::__private::DefaultCodec as _;
                (&&::millstream::__private::CodecOf::<OrderPlaced>::new()).codec()
            };
            let route = ::millstream::__private::payload_route_1::<
                _,
                _,
                (),
                ::millstream::__private::Whole,
                ::millstream::__private::Whole,
                OrderPlaced,
            >(
                Self::INFO.name,
                Self::INFO.topic,
                on_placed,
                ::core::clone::Clone::clone(&codec),
            );
            let route = ::millstream::__private::event_route::<
                OrderPlaced,
                _,
            >(route, codec);
            route
        }
        fn handler_type() -> ::core::any::TypeId {
            ::millstream::__private::type_id_of_val(&on_placed)
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
        ::millstream::__private::HandlerDescriptor::of::<OnPlacedHandler>()
    };
};
fn main() {}
