//! Procedural macros of millstream. Use them through the `millstream` crate, which re-exports them
//! (`#[millstream::handler]`, `#[millstream::topic]`, `#[millstream::middleware]`) and pins this
//! crate to its exact version.
//!
//! Each macro lives in its own module, in three steps: `parse` reads the attribute and the item,
//! `validate` checks them and records every mistake with its span, `expand` writes the code. The
//! item is always emitted unchanged, errors or not; generated items sit in `const _: () = { .. };`;
//! every path they use comes from `paths.rs`.
//!
//! The arities and the extractors the handler macro knows are written once, in `shared.rs`; the
//! runtime reads them through two hidden macros, `__for_each_arity!` and `__assert_extractors!`.

mod attr;
mod errors;
mod handler;
mod message_type;
mod middleware;
mod names;
mod paths;
mod saga;
mod scope;
mod shared;
mod suggest;
mod topic;

use proc_macro::TokenStream;

/// Declares an async fn as a message handler and registers it, so that
/// `App::from_registry()` runs it.
///
/// ```ignore
/// #[millstream::handler]                          // topic from the payload's #[topic] type
/// async fn bill(order: OrderPlaced, State(prices): State<Prices>) -> Result<InvoiceIssued, Error> { .. }
///
/// #[millstream::handler(topic = "audit", group = "auditors", concurrency = 8, middleware = [timing])]
/// async fn audit(event: Json<serde_json::Value>, meta: Metadata) { .. }
/// ```
///
/// # Parameters
/// The first parameter may be the payload: any `DeserializeOwned` type, decoded with the handler's
/// codec. Every other parameter is an extractor (`State<T>`, `Ctx`, `Metadata`, `MessageId`,
/// `Bytes`, `Json<T>`, `Message`, `Attempt`, or your own `FromMessage` type). Which is which is
/// decided by the type's name: a parameter whose type is not one of those extractors is the
/// payload. Mark a parameter `#[extract]` (your own extractor) or `#[payload]` (a payload type named
/// like an extractor) to say otherwise.
///
/// # Return value
/// `()`, `Result<(), E>`, or values to publish: `T`, `Option<T>`, `Vec<T>`, or those in a
/// `Result<_, E>`, where `T` is a `#[millstream::topic]` type (published to its own topic),
/// `Json<_>` or a `Publishable` type (published to the `publish` topic), and `E: Into<Error>`.
///
/// # Keys
/// | key | value | default |
/// | --- | --- | --- |
/// | `topic` | `"name"` or a `#[topic]` type (which must be the payload type) | the payload's `#[topic]` |
/// | `publish` | `"name"` or a `#[topic]` type (checked against the return type) | a returned value's own topic |
/// | `group` | `"name"` | the handler's name |
/// | `concurrency` | integer ≥ 1 | 1 |
/// | `order` | `"key"`: with `concurrency` above 1, messages with the same key stay in order | none |
/// | `name` | `"name"` | `module::path::fn_name` |
/// | `pubsub` | `"name"` of a pub/sub added with `App::pubsub_named` | the app's default |
/// | `codec` | an expression implementing `Codec + Clone` | `JsonCodec` |
/// | `middleware` | `[expr, ..]`: `Middleware` values or `#[middleware]` fns, outermost first | none |
/// | `service` | `"tag"`, for `App::from_registry().service("tag")` | none |
/// | `crate` | the path to `millstream`, if renamed or re-exported | `::millstream` |
///
/// # Checked at compile time
/// An unknown or repeated key (a misspelled one with the key meant), a value of the wrong type, a
/// fn that is not async, generic, takes `self`, sits in an `impl` or `trait` block, or has two
/// payloads, a parameter that is not an extractor, a payload that is not `DeserializeOwned`, a
/// returned value that is not `Serialize` or has no topic, an error type that does not convert
/// into `millstream::Error`, `publish` on a fn that returns nothing, a `topic` type that is not
/// the payload's. Each error points at the offending token and names what is missing.
///
/// The fn is left as written: it can still be called and tested directly.
#[proc_macro_attribute]
pub fn handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    handler::handler(handler::Role::Handler, attr.into(), item.into()).into()
}

/// Binds a struct or enum to a topic: `#[millstream::topic("orders.placed")]` implements
/// `millstream::Topic` with that name.
///
/// A handler taking the type as payload reads that topic; returning it, publishing it from a
/// `Ctx`, a publisher (`PublishExt::publish_value`) or a `TestApp` sends it there. Optional
/// `crate = path` after the name, if `millstream` is renamed.
#[proc_macro_attribute]
pub fn topic(attr: TokenStream, item: TokenStream) -> TokenStream {
    topic::topic(attr.into(), item.into()).into()
}

/// Declares a struct or enum a command: `#[millstream::command]` implements `millstream::Topic`
/// and `millstream::Command` for it.
///
/// ```ignore
/// #[derive(Serialize, Deserialize)]
/// #[millstream::command]                       // topic "commands.PlaceOrder", type "PlaceOrder", version 1
/// struct PlaceOrder { id: u64 }
///
/// #[derive(Serialize, Deserialize)]
/// #[millstream::command(topic = "billing", name = "Charge", version = 2)]
/// struct ChargeCard { order: u64, cents: u64 }
/// ```
///
/// Every message of the type carries its kind, name and version in metadata
/// (`millstream.kind`, `millstream.type`, `millstream.version`). Send one with
/// `millstream::CommandBus`, or return it from a handler; handle it with exactly one
/// `#[millstream::command_handler]`.
///
/// | key | value | default |
/// | --- | --- | --- |
/// | `topic` | `"name"` | `"commands.<name>"` |
/// | `name` | `"name"`: the type name carried in metadata | the type's name |
/// | `version` | integer ≥ 1: the schema version | 1 |
/// | `crate` | the path to `millstream`, if renamed or re-exported | `::millstream` |
///
/// The type cannot be generic (its name is its identity in every message).
#[proc_macro_attribute]
pub fn command(attr: TokenStream, item: TokenStream) -> TokenStream {
    message_type::message_type(message_type::Kind::Command, attr.into(), item.into()).into()
}

/// Declares a struct or enum an event: `#[millstream::event]` implements `millstream::Topic` and
/// `millstream::Event` for it.
///
/// Default topics follow a naming rule set at build time: `MILLSTREAM_EVENT_TOPICS` (and
/// `MILLSTREAM_COMMAND_TOPICS` for commands), with `{name}` for the type name, e.g.
/// `billing.events.{name}` in `.cargo/config.toml`'s `[env]`; without one, `events.{name}`.
///
/// The keys are those of [`macro@command`]; the default topic is `"events.<name>"`. Several event
/// types may share one topic (`topic = "orders"`: one stream per aggregate, in order); each
/// `#[millstream::event_handler]` then runs only for its own type. Publish one with
/// `millstream::EventBus`, or return it from a handler.
#[proc_macro_attribute]
pub fn event(attr: TokenStream, item: TokenStream) -> TokenStream {
    message_type::message_type(message_type::Kind::Event, attr.into(), item.into()).into()
}

/// Declares an async fn the one handler of a command (a `#[millstream::command]` type, its first
/// parameter) and registers it.
///
/// Everything else is as for [`macro@handler`] (extractors, return values, keys), except that
/// the topic is the command's own (no `topic` key), and the handler runs only for messages of its
/// command type. A command has exactly one handler: a second `#[command_handler]` of the same
/// command in the same crate does not compile (conflicting implementations of
/// `CommandHasOneHandler`), and two from different crates fail `App::build`, naming both. When
/// the command type is defined in another crate, write `#[millstream::command_handler(external)]`
/// (Rust allows the compile-time check only for the crate's own types).
#[proc_macro_attribute]
pub fn command_handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    handler::handler(handler::Role::Command, attr.into(), item.into()).into()
}

/// Declares an async fn a handler of an event (a `#[millstream::event]` type, its first
/// parameter) and registers it.
///
/// Everything else is as for [`macro@handler`], except that the topic is the event's own (no
/// `topic` key) and the handler runs only for messages of its event type (on a topic several
/// event types share, the others are acked without running it). An event has any number of
/// handlers, each in its own consumer group by default (its name).
#[proc_macro_attribute]
pub fn event_handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    handler::handler(handler::Role::Event, attr.into(), item.into()).into()
}

/// Declares a struct or enum the state of a saga: `#[millstream::saga]` implements
/// `millstream::__private::SagaState` for it, named by the type's name or `name = ".."` (the
/// name keys the saga's instances in the store: keep it when renaming the type). The type must
/// be `Default` (a new instance's state), `Serialize` and `Deserialize` (stored as JSON).
#[proc_macro_attribute]
pub fn saga(attr: TokenStream, item: TokenStream) -> TokenStream {
    saga::saga(attr.into(), item.into()).into()
}

/// Declares an async fn a step of a saga and registers it:
/// `async fn step(saga: &mut Saga<State>, message: M, extractors..) -> Result<(), E>`.
///
/// The message's correlation id names the saga instance; the handler runs with its state, and
/// what it sends through the `Saga` (commands, events, compensations, timeouts) is committed
/// with the new state when it returns `Ok`. `start` lets the step begin an instance when none is
/// running; without it, a message for no running instance is acked unhandled. `id = field`
/// names the instance by that field of the message instead of its correlation id. The topic is the
/// message type's own (no `topic` key); the other keys are those of [`macro@handler`] but
/// `publish` (a step sends through the saga).
#[proc_macro_attribute]
pub fn saga_handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    handler::handler(handler::Role::Saga, attr.into(), item.into()).into()
}

/// Declares `async fn name(message: Message, next: Next) -> HandlerResult` as a middleware.
///
/// With `priority = N` it is registered router-wide: `App::from_registry()` adds it to every
/// handler, in priority order (higher first, that is outermost; ties by name). Without a
/// priority it runs only where a handler names it: `#[handler(middleware = [timing])]`.
/// Other keys: `name = ".."`, `service = "tag"` (only for apps selecting that service),
/// `crate = path`.
#[proc_macro_attribute]
pub fn middleware(attr: TokenStream, item: TokenStream) -> TokenStream {
    middleware::middleware(attr.into(), item.into()).into()
}

/// Not public API: the runtime implements `Handler` for every arity with it. `__for_each_arity!(m)`
/// expands to `m!(E1, .., EN);` for every count `N` of extractors a handler may take.
#[doc(hidden)]
#[proc_macro]
pub fn __for_each_arity(input: TokenStream) -> TokenStream {
    shared::for_each_arity(input.into()).into()
}

/// Not public API: the runtime checks with it that every type the handler macro takes for an
/// extractor by its name is one.
#[doc(hidden)]
#[proc_macro]
pub fn __assert_extractors(input: TokenStream) -> TokenStream {
    shared::assert_extractors(input.into()).into()
}

#[cfg(test)]
mod tests {
    //! The one-level expansion shown in `docs/expansion.md` is this crate's real output: the test
    //! fails when they differ; `UPDATE_EXPANSION=1` rewrites the document's code block.

    use quote::quote;

    const START: &str = "<!-- expansion:start -->\n";
    const END: &str = "<!-- expansion:end -->";

    #[test]
    fn docs_show_the_real_expansion() {
        let attr = quote!(group = "billing", concurrency = 4, middleware = [timing]);
        let item = quote! {
            async fn bill(order: OrderPlaced, State(prices): State<Prices>) -> Result<InvoiceIssued, Error> {
                Ok(InvoiceIssued { order_id: order.id, cents: u64::from(order.qty) * prices.cents_per_item })
            }
        };
        let output = crate::handler::handler(crate::handler::Role::Handler, attr, item);
        let file: syn::File = syn::parse2(output).expect("the expansion parses");
        let expected = format!("```rust\n{}```\n", prettyplease::unparse(&file));

        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/expansion.md");
        let doc = std::fs::read_to_string(path).expect("docs/expansion.md");
        let start = doc.find(START).expect("start marker") + START.len();
        let end = doc.find(END).expect("end marker");
        if std::env::var_os("UPDATE_EXPANSION").is_some() {
            let updated = format!("{}{expected}{}", &doc[..start], &doc[end..]);
            std::fs::write(path, updated).expect("docs/expansion.md written");
            return;
        }
        assert_eq!(&doc[start..end], expected, "run with UPDATE_EXPANSION=1 to refresh docs/expansion.md");
    }
}
