//! The link-time registry: every `#[millstream::handler]` and `#[millstream::middleware]` linked into
//! the binary, found without a list written by hand.
//!
//! Each macro expands to a struct implementing [`HandlerDef`] (or [`MiddlewareDef`]) and one static
//! [`HandlerDescriptor`] submitted to a collector: [`linkme`](https://docs.rs/linkme) by default, or
//! [`inventory`](https://docs.rs/inventory) with the `inventory` cargo feature. The macros go through
//! `millstream::__private`, so switching the collector changes no user code.
//!
//! [`handlers`] and [`middleware`] build their table on first use and sort it (link order is not
//! guaranteed), so every run sees the same order. [`App`](crate::app::App) reads the table; two
//! handlers with one name are reported when the app is built, with both locations.
//!
//! # A crate nothing references is not linked
//! rustc links a dependency only if the code refers to it. Handlers defined in a library crate are
//! found only when the binary mentions that crate somewhere; if it uses nothing from it, write
//!
//! ```ignore
//! use my_handlers as _; // links my_handlers, and so registers its handlers
//! ```
//!
//! # Platforms
//! `linkme` needs linker support for its sections (Linux, macOS, Windows, the BSDs, illumos...);
//! `inventory` runs constructors at start-up and collects nothing where those do not run. Either
//! way, [`App::build`](crate::app::App::build) fails with "no handlers" rather than running a binary
//! that silently does nothing.

use std::any::TypeId;
use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::middleware::Middleware;
pub use crate::router::Location;
use crate::router::Route;
use crate::topic::MessageType;

#[cfg(not(any(feature = "linkme", feature = "inventory")))]
compile_error!("millstream needs a registry collector: enable the `linkme` (default) or `inventory` feature");

/// What `#[millstream::handler]` knows about a handler at compile time.
///
/// Every field is a constant, so the descriptor lives in a `static`. Its `Debug` shows the
/// effective group (the handler's name when no `group` key was given).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HandlerInfo {
    /// The handler's name: the `name` key, or the module path and the fn name (`shop::billing::bill`).
    /// It is also the default consumer group.
    pub name: &'static str,
    /// The name of the async fn.
    pub fn_name: &'static str,
    /// The topic it reads: the `topic` key, or the name of the payload's `#[millstream::topic]` type.
    pub topic: &'static str,
    /// The consumer group (`group` key); `None`: the handler's name.
    pub group: Option<&'static str>,
    /// Where its return values go (`publish` key); `None`: a typed value's own topic.
    pub publish: Option<&'static str>,
    /// How many messages it handles at once (`concurrency` key, default 1).
    pub concurrency: usize,
    /// Messages with the same key stay in order across its lanes (`order = "key"`).
    pub order_by_key: bool,
    /// The delays of its retry topics in milliseconds (`retry_topics = ["1s", ..]`; see
    /// [`Route::retry_topics`](crate::Route::retry_topics)); empty: none.
    pub retry_topics: &'static [u64],
    /// Where its failed messages end (`dead_letter` key); `None`: the router's poison topic.
    pub dead_letter: Option<&'static str>,
    /// The payload type as written in the fn signature; `None` when every argument is an extractor.
    pub payload: Option<&'static str>,
    /// The type of the values it returns to publish, as written (`InvoiceIssued` in
    /// `Result<Vec<InvoiceIssued>, Error>`); `None` when it publishes nothing or the return type
    /// is not taken apart (an alias).
    pub output: Option<&'static str>,
    /// The tag that scopes discovery (`service` key).
    pub service: Option<&'static str>,
    /// The named pub/sub it runs on (`pubsub` key); `None`: the app's default one.
    pub pubsub: Option<&'static str>,
    /// A plain handler, or the handler of a command or an event.
    pub role: Role,
    /// `module_path!()` where the handler is declared.
    pub module_path: &'static str,
    /// `file!()` where the handler is declared.
    pub file: &'static str,
    /// `line!()` of the handler's attribute.
    pub line: u32,
}

/// Which attribute declared a handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `#[millstream::handler]`.
    Handler,
    /// `#[millstream::command_handler]`: the one handler of its command type.
    CommandHandler,
    /// `#[millstream::event_handler]`: one of any number of handlers of its event type.
    EventHandler,
    /// `#[millstream::saga_handler]`: a step of a saga (`start`: one that may begin an instance).
    SagaHandler {
        /// It starts an instance when none is running.
        start: bool,
    },
}

impl HandlerInfo {
    /// The fn's full path: module path and fn name.
    pub fn path(&self) -> String {
        format!("{}::{}", self.module_path, self.fn_name)
    }

    /// `file:line`, for messages.
    pub fn location(&self) -> Location {
        Location { file: self.file, line: self.line }
    }

    /// The consumer group it reads in: the `group` key, or else the handler's name.
    pub fn effective_group(&self) -> &'static str {
        self.group.unwrap_or(self.name)
    }
}

impl fmt::Debug for HandlerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerInfo")
            .field("name", &self.name)
            .field("fn_name", &self.fn_name)
            .field("topic", &self.topic)
            .field("group", &self.effective_group())
            .field("publish", &self.publish)
            .field("concurrency", &self.concurrency)
            .field("order_by_key", &self.order_by_key)
            .field("payload", &self.payload)
            .field("output", &self.output)
            .field("service", &self.service)
            .field("pubsub", &self.pubsub)
            .field("role", &self.role)
            .field("module_path", &self.module_path)
            .field("location", &format_args!("{}", self.location()))
            .finish()
    }
}

/// Implemented by the struct `#[millstream::handler]` generates for each handler fn.
pub trait HandlerDef: 'static {
    /// The handler's compile-time facts.
    const INFO: HandlerInfo;

    /// Builds the handler's [`Route`] (handler, codec and its own middleware; the app applies the
    /// group, concurrency, publish topic and pub/sub from [`INFO`](HandlerDef::INFO)).
    fn route() -> Route;

    /// The type of the handler fn itself, so that `App::new().handler(bill)` finds this definition.
    fn handler_type() -> TypeId;

    /// The payload type, to find two handlers reading one topic as different types.
    fn payload_type() -> Option<TypeId>;

    /// The payload type's JSON Schema, when it has one (`schema` feature, `JsonSchema` types).
    fn payload_schema() -> Option<serde_json::Value> {
        None
    }

    /// The returned type's JSON Schema, when it has one (`schema` feature, `JsonSchema` types).
    fn output_schema() -> Option<serde_json::Value> {
        None
    }

    /// The payload's type name and version, for a command, event or saga handler of a
    /// `#[millstream::command]` or `#[millstream::event]` type (an event group dispatches by it).
    fn message_type() -> Option<MessageType> {
        None
    }
}

/// One registered handler: its [`HandlerInfo`] and how to build it.
#[derive(Clone, Copy)]
pub struct HandlerDescriptor {
    info: HandlerInfo,
    route: fn() -> Route,
    handler_type: fn() -> TypeId,
    payload_type: fn() -> Option<TypeId>,
    payload_schema: fn() -> Option<serde_json::Value>,
    output_schema: fn() -> Option<serde_json::Value>,
    message_type: fn() -> Option<MessageType>,
}

impl HandlerDescriptor {
    /// The descriptor of a generated handler definition.
    pub const fn of<D: HandlerDef>() -> Self {
        HandlerDescriptor {
            info: D::INFO,
            route: D::route,
            handler_type: D::handler_type,
            payload_type: D::payload_type,
            payload_schema: D::payload_schema,
            output_schema: D::output_schema,
            message_type: D::message_type,
        }
    }

    /// The compile-time facts.
    pub fn info(&self) -> &HandlerInfo {
        &self.info
    }

    /// Builds a fresh [`Route`] for it (without the settings from [`info`](Self::info)).
    pub fn route(&self) -> Route {
        (self.route)()
    }

    /// The type of the handler fn.
    pub fn handler_type(&self) -> TypeId {
        (self.handler_type)()
    }

    /// The payload type, if the handler has a payload parameter.
    pub fn payload_type(&self) -> Option<TypeId> {
        (self.payload_type)()
    }

    /// The payload type's JSON Schema (`schema` feature, a type deriving `JsonSchema`).
    pub fn payload_schema(&self) -> Option<serde_json::Value> {
        (self.payload_schema)()
    }

    /// The returned type's JSON Schema (`schema` feature, a type deriving `JsonSchema`).
    pub fn output_schema(&self) -> Option<serde_json::Value> {
        (self.output_schema)()
    }

    /// The payload's command or event type, for a typed handler.
    pub fn message_type(&self) -> Option<MessageType> {
        (self.message_type)()
    }
}

impl fmt::Debug for HandlerDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerDescriptor").field("info", &self.info).finish_non_exhaustive()
    }
}

/// What `#[millstream::middleware]` knows about a middleware fn at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MiddlewareInfo {
    /// The module path and fn name, or the `name` key.
    pub name: &'static str,
    /// Router-wide order (`priority` key): higher runs first (outermost). `None`: not router-wide,
    /// only used where a handler names it in `middleware = [..]`.
    pub priority: Option<i32>,
    /// Only for apps selecting this `service` tag; `None`: for every app.
    pub service: Option<&'static str>,
    /// `module_path!()` where it is declared.
    pub module_path: &'static str,
    /// `file!()` where it is declared.
    pub file: &'static str,
    /// `line!()` of its attribute.
    pub line: u32,
}

impl MiddlewareInfo {
    /// `file:line`, for messages.
    pub fn location(&self) -> Location {
        Location { file: self.file, line: self.line }
    }
}

/// Implemented by the struct `#[millstream::middleware]` generates for each middleware fn.
pub trait MiddlewareDef: 'static {
    /// The middleware's compile-time facts.
    const INFO: MiddlewareInfo;

    /// Builds the middleware.
    fn layer() -> Arc<dyn Middleware>;
}

/// One registered middleware.
#[derive(Clone, Copy)]
pub struct MiddlewareDescriptor {
    info: MiddlewareInfo,
    layer: fn() -> Arc<dyn Middleware>,
}

impl MiddlewareDescriptor {
    /// The descriptor of a generated middleware definition.
    pub const fn of<D: MiddlewareDef>() -> Self {
        MiddlewareDescriptor { info: D::INFO, layer: D::layer }
    }

    /// The compile-time facts.
    pub fn info(&self) -> &MiddlewareInfo {
        &self.info
    }

    /// Builds the middleware.
    pub fn layer(&self) -> Arc<dyn Middleware> {
        (self.layer)()
    }
}

impl fmt::Debug for MiddlewareDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MiddlewareDescriptor").field("info", &self.info).finish_non_exhaustive()
    }
}

/// Every handler registered in this binary, sorted by name (then location).
pub fn handlers() -> &'static [&'static HandlerDescriptor] {
    static TABLE: OnceLock<Vec<&'static HandlerDescriptor>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table: Vec<_> = collect::handlers().collect();
        table.sort_by_key(|d| (d.info.name, d.info.location()));
        table
    })
}

/// Every middleware registered in this binary, in router order: by priority, highest first (those
/// without a priority last), then by name.
pub fn middleware() -> &'static [&'static MiddlewareDescriptor] {
    static TABLE: OnceLock<Vec<&'static MiddlewareDescriptor>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table: Vec<_> = collect::middleware().collect();
        table.sort_by_key(|d| (std::cmp::Reverse(d.info.priority), d.info.name, d.info.location()));
        table
    })
}

/// The registered handler whose fn has type `handler`, if any.
pub(crate) fn find_handler(handler: TypeId) -> Option<&'static HandlerDescriptor> {
    handlers().iter().copied().find(|d| d.handler_type() == handler)
}

#[cfg(feature = "inventory")]
mod collect {
    use super::{HandlerDescriptor, MiddlewareDescriptor};

    inventory::collect!(HandlerDescriptor);
    inventory::collect!(MiddlewareDescriptor);

    pub(super) fn handlers() -> impl Iterator<Item = &'static HandlerDescriptor> {
        inventory::iter::<HandlerDescriptor>.into_iter()
    }

    pub(super) fn middleware() -> impl Iterator<Item = &'static MiddlewareDescriptor> {
        inventory::iter::<MiddlewareDescriptor>.into_iter()
    }

    /// Submits a handler definition (used by the generated code).
    #[doc(hidden)]
    #[macro_export]
    macro_rules! __millstream_register_handler {
        ($def:ty) => {
            $crate::__private::inventory::submit! {
                $crate::__private::HandlerDescriptor::of::<$def>()
            }
        };
    }

    /// Submits a middleware definition (used by the generated code).
    #[doc(hidden)]
    #[macro_export]
    macro_rules! __millstream_register_middleware {
        ($def:ty) => {
            $crate::__private::inventory::submit! {
                $crate::__private::MiddlewareDescriptor::of::<$def>()
            }
        };
    }
}

#[cfg(all(feature = "linkme", not(feature = "inventory")))]
mod collect {
    use super::{HandlerDescriptor, MiddlewareDescriptor};

    /// The handlers' section.
    #[linkme::distributed_slice]
    pub static HANDLERS: [HandlerDescriptor];

    /// The middleware's section.
    #[linkme::distributed_slice]
    pub static MIDDLEWARE: [MiddlewareDescriptor];

    pub(super) fn handlers() -> impl Iterator<Item = &'static HandlerDescriptor> {
        HANDLERS.iter()
    }

    pub(super) fn middleware() -> impl Iterator<Item = &'static MiddlewareDescriptor> {
        MIDDLEWARE.iter()
    }

    /// Submits a handler definition (used by the generated code).
    #[doc(hidden)]
    #[macro_export]
    macro_rules! __millstream_register_handler {
        ($def:ty) => {
            #[$crate::__private::linkme::distributed_slice($crate::__private::HANDLERS)]
            #[linkme(crate = $crate::__private::linkme)]
            static REGISTRATION: $crate::__private::HandlerDescriptor =
                $crate::__private::HandlerDescriptor::of::<$def>();
        };
    }

    /// Submits a middleware definition (used by the generated code).
    #[doc(hidden)]
    #[macro_export]
    macro_rules! __millstream_register_middleware {
        ($def:ty) => {
            #[$crate::__private::linkme::distributed_slice($crate::__private::MIDDLEWARE)]
            #[linkme(crate = $crate::__private::linkme)]
            static REGISTRATION: $crate::__private::MiddlewareDescriptor =
                $crate::__private::MiddlewareDescriptor::of::<$def>();
        };
    }
}

#[cfg(all(feature = "linkme", not(feature = "inventory")))]
#[doc(hidden)]
pub use collect::{HANDLERS, MIDDLEWARE};
