//! [`App`]: the one builder. Backends, state, layers and handlers (`#[millstream::handler]` fns
//! from the registry, or hand-made [`Route`]s) go in; [`App::build`] checks everything as a whole
//! before any message is read and gives the [`Router`], the running handle.
//!
//! ```no_run
//! use millstream::prelude::*;
//! use millstream::App;
//!
//! #[derive(Serialize, Deserialize)]
//! #[millstream::topic("orders.placed")]
//! struct OrderPlaced { id: u64 }
//!
//! #[millstream::handler]
//! async fn log_order(order: OrderPlaced) {
//!     println!("order {}", order.id);
//! }
//!
//! #[tokio::main]
//! async fn main() -> millstream::Result<()> {
//!     App::from_registry()          // every #[handler] linked into this binary
//!         .pubsub(MemoryPubSub::new())
//!         .run_until_ctrl_c()
//!         .await
//! }
//! ```
//!
//! [`App::build`] reports every problem in one error: a `State<T>` that was never provided (with
//! every handler that uses it), two handlers with one name (with both locations), two payload
//! types on one topic, a handler bound to a pub/sub name that was not configured, an expected
//! handler that is not registered, no pub/sub, no handlers at all.
//!
//! A program that is not a server (a demo, a job, a test) builds, starts, publishes and shuts
//! down by hand:
//!
//! ```
//! # use millstream::prelude::*;
//! # #[derive(Serialize, Deserialize)]
//! # #[millstream::topic("app-doc.orders")]
//! # struct Order { id: u64 }
//! # #[millstream::handler]
//! # async fn take(order: Order) { let _ = order.id; }
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
//! let router = App::new().handler(take).pubsub(MemoryPubSub::new()).start().await?;
//! router.publisher().publish_value(&Order { id: 1 }).await?;
//! router.shutdown();
//! router.close().await?; // in-flight messages finish first
//! # Ok(()) }
//! ```

use std::any::TypeId;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;

use crate::codec::{Codec, JsonCodec};
use crate::delay::{DelayStore, Scheduler};
use crate::error::{Error, ErrorKind, Result};
use crate::handler::{Handler, Topic};
use crate::middleware::Middleware;
use crate::pubsub::{OpFuture, PubSub, Publisher, Subscriber};
use crate::registry::{self, HandlerDescriptor, HandlerInfo, Role};
use crate::router::{combine, event_group, Member, Parts, Route, Router, RouterConfig, UnknownEvents};
use crate::state::StateMap;

/// A publisher and a subscriber, usually one backend.
#[derive(Clone)]
pub(crate) struct Backend {
    pub(crate) publisher: Arc<dyn Publisher>,
    pub(crate) subscriber: Arc<dyn Subscriber>,
    /// Publisher and subscriber are one backend: what is published to a topic can be read from
    /// it (what requeueing and retry topics need).
    pub(crate) paired: bool,
}

impl Backend {
    pub(crate) fn new<P: PubSub>(pubsub: P) -> Self {
        let pubsub = Arc::new(pubsub);
        Backend { publisher: pubsub.clone(), subscriber: pubsub, paired: true }
    }
}

/// The one builder of a millstream program: it makes the [`Router`] (see the [module docs](self)).
///
/// Two forms: [`App::from_registry`] takes every `#[millstream::handler]` linked into the binary,
/// narrowed by [`service`](App::service) tags or [module path prefixes](App::module_prefix);
/// [`App::new`] starts empty and takes `#[millstream::handler]` fns one by one with
/// [`handler`](App::handler). Either takes hand-made [`Route`]s with [`route`](App::route).
///
/// Layers: registered `#[millstream::middleware(priority = ..)]` fns are outermost (highest
/// priority first), then the layers given with [`layer`](App::layer), in the order given, then
/// each handler's own (`middleware = [..]`, [`Route::layer`]). Layers added first are called first.
pub struct App {
    from_registry: bool,
    services: Vec<String>,
    prefixes: Vec<String>,
    explicit: Vec<&'static HandlerDescriptor>,
    expected: Vec<String>,
    routes: Vec<Route>,
    problems: Vec<Error>,
    layers: Vec<Arc<dyn Middleware>>,
    pubsub: Option<Backend>,
    named: BTreeMap<String, Backend>,
    state: StateMap,
    config: RouterConfig,
    /// What each event group does with a type none of its handlers takes.
    unknown_events: BTreeMap<String, UnknownEvents>,
    /// Where delayed messages wait ([`App::delays`]).
    delays: Option<Arc<dyn DelayStore>>,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// An app with no handlers: add them with [`handler`](App::handler) or [`route`](App::route).
    pub fn new() -> Self {
        App {
            from_registry: false,
            services: Vec::new(),
            prefixes: Vec::new(),
            explicit: Vec::new(),
            expected: Vec::new(),
            routes: Vec::new(),
            problems: Vec::new(),
            layers: Vec::new(),
            pubsub: None,
            named: BTreeMap::new(),
            state: StateMap::new(),
            config: RouterConfig::default(),
            unknown_events: BTreeMap::new(),
            delays: None,
        }
    }

    /// An app with every `#[millstream::handler]` and router-wide `#[millstream::middleware]`
    /// linked into this binary, narrowed by [`service`](App::service) and
    /// [`module_prefix`](App::module_prefix) if given.
    pub fn from_registry() -> Self {
        App { from_registry: true, ..Self::new() }
    }

    /// Keeps only registered handlers tagged `service = "tag"` (this one or another given the same
    /// way). Registered middleware tagged with another service is left out too.
    pub fn service(mut self, tag: impl Into<String>) -> Self {
        self.services.push(tag.into());
        self
    }

    /// Keeps only registered handlers and middleware declared in the module `prefix` or below it
    /// (`"shop::billing"` keeps `shop::billing` and `shop::billing::refunds`); repeatable.
    pub fn module_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    /// Fails [`build`](App::build) unless every handler named here is in the app: for programs
    /// that must not run without them (a handler in a library crate that was not linked, say).
    /// Names are handler names: the `name` key, or `module::path::fn_name`.
    pub fn expect_handlers<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.expected.extend(names.into_iter().map(Into::into));
        self
    }

    /// Adds one `#[millstream::handler]` fn: `App::new().handler(bill)`.
    ///
    /// The fn is found in the registry by its type; a fn without the attribute is reported by
    /// [`build`](App::build). Adding a handler the app already has does nothing.
    pub fn handler<H: Handler<M>, M: 'static>(mut self, handler: H) -> Self {
        let _ = handler;
        match registry::find_handler(TypeId::of::<H>()) {
            Some(descriptor) => self.explicit.push(descriptor),
            None => self.problems.push(Error::new(
                ErrorKind::Config,
                format!(
                    "`{}` was added with `.handler(..)` but is not a registered `#[millstream::handler]` fn; \
                     add the attribute, or add it as a plain `Route` with `.route(..)`",
                    std::any::type_name::<H>()
                ),
            )),
        }
        self
    }

    /// Adds a handler built by hand with [`Route`].
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Adds a middleware around every handler of the app: inside the registered
    /// `#[millstream::middleware]` fns, outside each handler's own layers, in the order added
    /// (layers added first are called first).
    pub fn layer(mut self, layer: impl Middleware) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// Sets the default pub/sub: handlers without a `pubsub = ".."` key read from it and publish
    /// to it.
    pub fn pubsub<P: PubSub>(mut self, pubsub: P) -> Self {
        self.pubsub = Some(Backend::new(pubsub));
        self
    }

    /// Connects to the backend `url` names ([`connect`](crate::connect())) and makes it the default
    /// pub/sub, so that one binary runs on the in-memory backend in its tests and on a broker in
    /// production, the URL coming from configuration:
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> millstream::Result<()> {
    /// let url = std::env::var("PUBSUB_URL").unwrap_or_else(|_| "memory://".into());
    /// millstream::App::from_registry().connect(&url).await?.run_until_ctrl_c().await
    /// # }
    /// ```
    pub async fn connect(self, url: &str) -> Result<Self> {
        Ok(self.pubsub(crate::connect::connect(url).await?))
    }

    /// Sets the default pub/sub as a publisher and a subscriber that may be different backends
    /// (read from one broker, publish to another).
    pub fn pubsub_parts(mut self, publisher: Arc<dyn Publisher>, subscriber: Arc<dyn Subscriber>) -> Self {
        let paired = std::ptr::addr_eq(Arc::as_ptr(&publisher), Arc::as_ptr(&subscriber));
        self.pubsub = Some(Backend { publisher, subscriber, paired });
        self
    }

    /// Adds a named pub/sub, for handlers declared with `pubsub = "name"`.
    pub fn pubsub_named<P: PubSub>(mut self, name: impl Into<String>, pubsub: P) -> Self {
        self.named.insert(name.into(), Backend::new(pubsub));
        self
    }

    /// Adds the routes of `forwarder` ([`Forwarder::routes`](crate::router::Forwarder::routes)):
    /// one per topic it relays, each reading from the forwarder's source and publishing to its
    /// target, whatever the app's own pub/sub is.
    pub fn forward(mut self, forwarder: crate::router::Forwarder) -> Self {
        self.routes.extend(forwarder.routes());
        self
    }

    /// Keeps delayed messages in `store` (a [`MemoryDelayStore`](crate::delay::MemoryDelayStore),
    /// or a durable [`SqlDelayStore`](crate::pubsub::sql::SqlDelayStore) /
    /// [`RedisDelayStore`](crate::pubsub::redis::RedisDelayStore)): the app puts a
    /// [`Scheduler`] in front of each of its publishers (the default one
    /// in the store's scope `""`, each named one in a scope of its name), so that
    /// - a message published with a delivery time ([`Message::deliver_at`](crate::Message::deliver_at)),
    ///   from a handler's outputs, [`Ctx`](crate::Ctx) or the buses, is published when due;
    /// - a handler may return [`Delayed<T>`](crate::Delayed) (an app without a delay store refuses
    ///   to build);
    /// - a failure to be retried after [`RouterConfig::requeue_after`] or longer is requeued
    ///   through the store rather than held on the broker.
    ///
    /// The relays start when the app is built inside a tokio runtime (or at the first delayed
    /// publish), and publish what earlier processes left due. Handlers given with their own
    /// publisher ([`Route::publisher`]) keep it as it is.
    pub fn delays(self, store: impl DelayStore) -> Self {
        self.delays_shared(Arc::new(store))
    }

    /// [`delays`](App::delays) with a store shared with other code (a relay of your own, say).
    pub fn delays_shared(mut self, store: Arc<dyn DelayStore>) -> Self {
        self.delays = Some(store);
        self
    }

    /// Adds application state, read by `State<T>` extractors (one value per type; a second
    /// value of a type replaces the first).
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// Replaces the router settings.
    pub fn config(mut self, config: RouterConfig) -> Self {
        self.config = config;
        self
    }

    /// What the event group `group` does with a message of a type none of its handlers takes
    /// (or of no stated type): [`UnknownEvents::Poison`] (the default) or
    /// [`UnknownEvents::Ignore`].
    ///
    /// An event group is two or more `#[millstream::event_handler]`s that read one topic in one
    /// explicit group (`group = ".."`): they read it as one subscription, each message going to
    /// the handler of its type, in the topic's order.
    pub fn unknown_events(mut self, group: impl Into<String>, policy: UnknownEvents) -> Self {
        self.unknown_events.insert(group.into(), policy);
        self
    }

    /// Runs every pub/sub of the app, the default one and each named one, on `backend`
    /// (what [`TestApp`](crate::testing::TestApp) does).
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) fn replace_backends(&mut self, backend: Backend) {
        let names: Vec<String> = self.pubsub_names().into_iter().map(str::to_owned).collect();
        for name in names {
            self.named.insert(name, backend.clone());
        }
        self.pubsub = Some(backend);
    }

    /// The settings, to adjust before building.
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) fn config_mut(&mut self) -> &mut RouterConfig {
        &mut self.config
    }

    fn in_prefixes(&self, module_path: &str) -> bool {
        self.prefixes.is_empty()
            || self.prefixes.iter().any(|p| {
                module_path == p
                    || (module_path.starts_with(p.as_str()) && module_path[p.len()..].starts_with("::"))
            })
    }

    fn selects_handler(&self, info: &HandlerInfo) -> bool {
        self.in_prefixes(info.module_path)
            && (self.services.is_empty()
                || info.service.is_some_and(|s| self.services.iter().any(|t| t == s)))
    }

    /// The registered handlers this app runs, in registry order, then those added by hand.
    fn descriptors(&self) -> Vec<&'static HandlerDescriptor> {
        let mut chosen: Vec<&'static HandlerDescriptor> = Vec::new();
        if self.from_registry {
            chosen.extend(registry::handlers().iter().copied().filter(|d| self.selects_handler(d.info())));
        }
        for descriptor in &self.explicit {
            if !chosen.iter().any(|c| std::ptr::eq(*c, *descriptor)) {
                chosen.push(descriptor);
            }
        }
        chosen
    }

    /// The handlers this app would run and the topics between them, without building it: draw it
    /// with [`Topology::mermaid`](crate::topology::Topology::mermaid) or
    /// [`dot`](crate::topology::Topology::dot).
    pub fn topology(&self) -> crate::topology::Topology {
        use crate::topology::Topology;
        let mut nodes = Vec::new();
        for descriptor in self.descriptors() {
            nodes.push(Topology::node(registered_route(descriptor).summary(), Some(descriptor)));
        }
        nodes.extend(self.routes.iter().map(|route| Topology::node(route.summary(), None)));
        Topology::new(nodes)
    }

    /// The named pub/subs the selected handlers use.
    pub(crate) fn pubsub_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.descriptors().iter().filter_map(|d| d.info().pubsub).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    fn registered_middleware(&self) -> Vec<Arc<dyn Middleware>> {
        if !self.from_registry {
            return Vec::new();
        }
        registry::middleware()
            .iter()
            .filter(|m| {
                let info = m.info();
                info.priority.is_some()
                    && self.in_prefixes(info.module_path)
                    && info.service.is_none_or(|s| self.services.iter().any(|t| t == s))
            })
            .map(|m| m.layer())
            .collect()
    }

    fn no_handlers(&self) -> Error {
        let registered = registry::handlers().len();
        let text = if !self.from_registry {
            "the app has no handlers; add them with `.handler(f)` or use `App::from_registry()`".to_owned()
        } else if registered == 0 {
            "no handlers are registered in this binary: is the crate that declares them linked? \
             A crate nothing refers to is not linked; add `use that_crate as _;`"
                .to_owned()
        } else {
            format!(
                "none of the {registered} registered handlers matches the filters (services {:?}, module prefixes {:?})",
                self.services, self.prefixes
            )
        };
        Error::new(ErrorKind::Config, text)
    }

    /// Checks everything and makes the router (not started); one error lists every problem.
    pub fn build(mut self) -> Result<Router> {
        let mut problems = std::mem::take(&mut self.problems);
        let descriptors = self.descriptors();
        // A handler that could not be added is reported already; "no handlers" would only repeat it.
        if descriptors.is_empty() && self.routes.is_empty() && problems.is_empty() {
            problems.push(self.no_handlers());
        }
        if self.pubsub.is_none() {
            problems.push(config("no pub/sub: set the default one with `.pubsub(..)`".to_owned()));
        }
        self.install_schedulers();
        check_names(&descriptors, &self.routes, &mut problems);
        check_payloads(&descriptors, &mut problems);
        check_command_handlers(&descriptors, &mut problems);
        check_typed_groups(&descriptors, &mut problems);

        let mut routes = Vec::with_capacity(descriptors.len() + self.routes.len());
        for descriptor in &descriptors {
            let info = descriptor.info();
            let mut route = registered_route(descriptor);
            if let Some(name) = info.pubsub {
                match self.named.get(name) {
                    Some(backend) => {
                        route = route.publisher(backend.publisher.clone()).subscriber(backend.subscriber.clone());
                        route.paired = backend.paired;
                    }
                    None => problems.push(config(format!(
                        "handler `{}` ({}) uses pub/sub `{name}`, which was not configured; add it with `.pubsub_named(\"{name}\", ..)`",
                        info.name,
                        info.location()
                    ))),
                }
            }
            routes.push(route);
        }
        routes.append(&mut self.routes);
        check_expected(&self.expected, &routes, &mut problems);
        let default_delays = self.pubsub.as_ref().is_some_and(|backend| backend.publisher.delays());
        for route in &routes {
            problems.extend(route.check());
            let delays = route.publisher.as_ref().map_or(default_delays, |publisher| publisher.delays());
            if route.delayed_output && !delays {
                problems.push(config(format!(
                    "handler `{}`{} returns `Delayed` values, but its publisher cannot hold them: give the app a delay \
                     store with `.delays(MemoryDelayStore::new())` (or a durable `SqlDelayStore` / `RedisDelayStore`)",
                    route.name,
                    route.location.map(|l| format!(" ({l})")).unwrap_or_default()
                )));
            }
        }
        check_state(&routes, &self.state, &mut problems);
        if !problems.is_empty() {
            return Err(combine(problems));
        }

        let routes = self.form_event_groups(&descriptors, routes)?;

        let backend = self.pubsub.clone().expect("checked above");
        let mut layers = self.registered_middleware();
        layers.append(&mut self.layers);
        // Saga steps find their instance by the correlation id of what the services answer.
        let has_sagas = descriptors.iter().any(|d| matches!(d.info().role, Role::SagaHandler { .. }));
        if has_sagas && !crate::middleware::layer_facts(&layers).correlates {
            tracing::warn!(
                "this app has saga steps but no router-wide `CorrelationId` layer: the events its handlers \
                 return carry no correlation id, and saga steps (without `id = field`) ack them unhandled; \
                 add `.layer(CorrelationId)`"
            );
        }
        let router = Router::new(Parts {
            paired: backend.paired,
            config: self.config,
            publisher: backend.publisher,
            subscriber: backend.subscriber,
            state: self.state,
            layers,
        });
        let errors: Vec<Error> = routes.into_iter().filter_map(|route| router.add(route).err()).collect();
        if !errors.is_empty() {
            return Err(combine(errors));
        }
        Ok(router)
    }

    /// Puts a [`Scheduler`] in front of every publisher of the app when it has a delay store, and
    /// starts their relays (inside a runtime; otherwise at their first delayed publish).
    fn install_schedulers(&mut self) {
        let Some(store) = self.delays.clone() else { return };
        let poison = self.config.poison_topic.clone();
        let wrap = |backend: &mut Backend, scope: &str| {
            if backend.publisher.delays() {
                return;
            }
            let scheduler = Scheduler::with_store(store.clone(), backend.publisher.clone())
                .scope(scope)
                .poison_topic(poison.clone());
            scheduler.start();
            backend.publisher = Arc::new(scheduler);
        };
        if let Some(backend) = &mut self.pubsub {
            wrap(backend, "");
        }
        for (name, backend) in &mut self.named {
            wrap(backend, name);
        }
    }

    /// Replaces the routes of each event group's handlers (the first `descriptors.len()` of
    /// `routes`, in the same order) with the group's one route.
    fn form_event_groups(
        &self,
        descriptors: &[&'static HandlerDescriptor],
        routes: Vec<Route>,
    ) -> Result<Vec<Route>> {
        let groups = event_groups(descriptors);
        let unknown: Vec<&String> = self
            .unknown_events
            .keys()
            .filter(|name| !groups.keys().any(|(_, _, group)| group == name))
            .collect();
        if !unknown.is_empty() {
            let groups: Vec<&str> = groups.keys().map(|(_, _, group)| *group).collect();
            return Err(config(format!(
                "`unknown_events` names {} no event group: an event group is two or more event handlers \
                 reading one topic with the same `group = \"..\"`{}",
                unknown.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", "),
                if groups.is_empty() {
                    String::new()
                } else {
                    format!(" (this app's: {})", groups.join(", "))
                }
            )));
        }
        if groups.is_empty() {
            return Ok(routes);
        }
        let mut slots: Vec<Option<Route>> = routes.into_iter().map(Some).collect();
        let mut formed = Vec::with_capacity(groups.len());
        for ((_, topic, group), indexes) in &groups {
            let members: Vec<Member> = indexes
                .iter()
                .filter_map(|&index| {
                    let type_name = descriptors[index].message_type().map_or("", |t| t.name);
                    slots[index].take().map(|route| Member { type_name, route })
                })
                .collect();
            if let Some(member) =
                members.iter().find(|m| !m.route.retry_delays.is_empty() || m.route.dead_letter.is_some())
            {
                return Err(config(format!(
                    "{} is in the event group `{group}` on `{topic}`, which reads its topic as one subscription: \
                     its `retry_topics` / `dead_letter` cannot apply there; give it a group of its own",
                    member.route.origin()
                )));
            }
            let policy = self.unknown_events.get(*group).copied().unwrap_or_default();
            formed.push(event_group(group, topic, members, policy));
        }
        Ok(slots.into_iter().flatten().chain(formed).collect())
    }

    /// Builds, then starts: every handler subscribed and reading when it returns.
    pub async fn start(self) -> Result<Router> {
        let router = self.build()?;
        router.start().await?;
        Ok(router)
    }

    /// Builds, then runs until [`Router::shutdown`] is called on a clone of the router (from a
    /// handler's state, say).
    pub async fn run(self) -> Result<()> {
        self.build()?.run().await
    }

    /// Builds, then runs until `signal` resolves, then shuts down gracefully.
    pub async fn run_until<F: Future>(self, signal: F) -> Result<()> {
        self.build()?.run_until(signal).await
    }

    /// Builds, then runs until ctrl-c, then shuts down gracefully.
    pub async fn run_until_ctrl_c(self) -> Result<()> {
        self.build()?.run_until_ctrl_c().await
    }
}

/// A registered handler's route with its keys applied (group, publish topic, concurrency, order
/// by key; not its named pub/sub, which the app resolves).
fn registered_route(descriptor: &HandlerDescriptor) -> Route {
    let info = descriptor.info();
    let mut route = descriptor.route().declared_at(info.location());
    if let Some(group) = info.group {
        route = route.group(group);
    }
    if let Some(publish) = info.publish {
        route = route.publish(publish);
    }
    route = route.concurrency(info.concurrency.max(1));
    if info.order_by_key {
        route = route.order_by_key();
    }
    if !info.retry_topics.is_empty() {
        route = route.retry_topics(info.retry_topics.iter().map(|ms| std::time::Duration::from_millis(*ms)));
    }
    if let Some(dead_letter) = info.dead_letter {
        route = route.dead_letter(dead_letter);
    }
    route
}

fn config(text: String) -> Error {
    Error::new(ErrorKind::Config, text)
}

/// Where a handler comes from, for messages.
fn origin(info: &HandlerInfo) -> String {
    format!("`{}` at {}", info.path(), info.location())
}

fn check_names(descriptors: &[&'static HandlerDescriptor], routes: &[Route], problems: &mut Vec<Error>) {
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    let all = descriptors
        .iter()
        .map(|d| (d.info().name, origin(d.info())))
        .chain(routes.iter().map(|r| (r.name(), "a `Route` added with `.route(..)`".to_owned())));
    for (name, from) in all {
        match seen.entry(name) {
            Entry::Vacant(slot) => {
                slot.insert(from);
            }
            Entry::Occupied(first) => problems.push(config(format!(
                "two handlers are named `{name}`: {} and {from}; give one a `name = \"..\"`",
                first.get()
            ))),
        }
    }
}

/// Every name given to [`App::expect_handlers`] names a handler of the app.
fn check_expected(expected: &[String], routes: &[Route], problems: &mut Vec<Error>) {
    let present: Vec<&str> = routes.iter().map(Route::name).collect();
    for name in expected.iter().filter(|name| !present.contains(&name.as_str())) {
        problems.push(config(format!(
            "expected handler `{name}` is not in the app (it has {present:?}); a handler declared in a \
             library crate is registered only when the binary links that crate: add `use that_crate as _;`"
        )));
    }
}

/// What the handlers' extractors report with the app's state, one error per problem with every
/// handler that has it (a `State<T>` never provided, used by three handlers, is one line).
fn check_state(routes: &[Route], state: &StateMap, problems: &mut Vec<Error>) {
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    for route in routes {
        for error in route.check_state(state) {
            let text = error.message().to_owned();
            match found.iter_mut().find(|(t, _)| *t == text) {
                Some((_, users)) => users.push(route.origin()),
                None => found.push((text, vec![route.origin()])),
            }
        }
    }
    for (text, users) in found {
        problems.push(config(format!("{text}; used by {}", users.join(", "))));
    }
}

/// A command has exactly one handler: two in one crate fail to compile; two from different
/// crates (or declared `external`) are reported here, with both locations.
fn check_command_handlers(descriptors: &[&'static HandlerDescriptor], problems: &mut Vec<Error>) {
    let mut by_command: BTreeMap<TypeId, &HandlerInfo> = BTreeMap::new();
    for descriptor in descriptors {
        let info = descriptor.info();
        // A saga step taking a command is that command's handler too.
        let handles_command = match info.role {
            Role::CommandHandler => true,
            Role::SagaHandler { .. } => {
                descriptor.message_type().is_some_and(|t| t.kind == crate::topic::MessageKind::Command)
            }
            Role::Handler | Role::EventHandler => false,
        };
        let (true, Some(payload)) = (handles_command, descriptor.payload_type()) else { continue };
        match by_command.entry(payload) {
            Entry::Vacant(slot) => {
                slot.insert(info);
            }
            Entry::Occupied(first) => {
                let first = *first.get();
                problems.push(config(format!(
                    "command `{}` has two handlers: `{}` ({}) and `{}` ({}); a command has exactly one handler \
                     (for several reactions, make it an event and use `#[millstream::event_handler]`)",
                    info.payload.unwrap_or("?"),
                    first.name,
                    first.location(),
                    info.name,
                    info.location()
                )));
            }
        }
    }
}

/// The event groups among `descriptors`: two or more event handlers reading one topic (on one
/// pub/sub) with the same explicit group, as indexes into `descriptors`.
fn event_groups(
    descriptors: &[&'static HandlerDescriptor],
) -> BTreeMap<(Option<&'static str>, &'static str, &'static str), Vec<usize>> {
    let mut groups: BTreeMap<_, Vec<usize>> = BTreeMap::new();
    for (index, descriptor) in descriptors.iter().enumerate() {
        let info = descriptor.info();
        if let (Role::EventHandler, Some(group)) = (info.role, info.group) {
            groups.entry((info.pubsub, info.topic, group)).or_default().push(index);
        }
    }
    groups.retain(|_, members| members.len() > 1);
    groups
}

/// Two command or event handlers reading one topic in one group would split its messages between
/// them, and each would ack the other's types without running: messages lost to both (unless
/// they are event handlers of an event group, which reads the topic once).
fn check_typed_groups(descriptors: &[&'static HandlerDescriptor], problems: &mut Vec<Error>) {
    let groups = event_groups(descriptors);
    let in_group = |index: usize| groups.values().any(|members| members.contains(&index));
    let mut seen: BTreeMap<(Option<&str>, &str, &str), &HandlerInfo> = BTreeMap::new();
    for (index, descriptor) in descriptors.iter().enumerate() {
        let info = descriptor.info();
        if info.role == Role::Handler || in_group(index) {
            continue;
        }
        match seen.entry((info.pubsub, info.topic, info.effective_group())) {
            Entry::Vacant(slot) => {
                slot.insert(info);
            }
            Entry::Occupied(first) => {
                let first = *first.get();
                problems.push(config(format!(
                    "handlers `{}` ({}) and `{}` ({}) both read topic `{}` in group `{}`: they would share its \
                     messages, each skipping the other's types, so neither would see them all; give each its \
                     own group (the default), or make them event handlers of one event group",
                    first.name,
                    first.location(),
                    info.name,
                    info.location(),
                    info.topic,
                    info.effective_group()
                )));
            }
        }
    }
    // An event group dispatches by type: one handler per type, and nothing else in its group.
    for ((pubsub, topic, group), members) in &groups {
        let mut types: BTreeMap<&str, &HandlerInfo> = BTreeMap::new();
        for &index in members {
            let info = descriptors[index].info();
            let name = descriptors[index].message_type().map_or("", |t| t.name);
            if let Some(first) = types.insert(name, info) {
                problems.push(config(format!(
                    "event group `{group}` (topic `{topic}`) has two handlers of `{name}`: `{}` ({}) and `{}` ({}); \
                     an event group runs one handler per type: give one of them another group",
                    first.name,
                    first.location(),
                    info.name,
                    info.location()
                )));
            }
        }
        if let Some(other) = seen.get(&(*pubsub, *topic, *group)) {
            problems.push(config(format!(
                "handler `{}` ({}) reads topic `{topic}` in group `{group}`, which is an event group: only its event \
                 handlers may read in it",
                other.name,
                other.location()
            )));
        }
    }
}

fn check_payloads(descriptors: &[&'static HandlerDescriptor], problems: &mut Vec<Error>) {
    let mut by_topic: BTreeMap<&str, (TypeId, &HandlerInfo)> = BTreeMap::new();
    for descriptor in descriptors {
        let (Some(payload), info) = (descriptor.payload_type(), descriptor.info()) else { continue };
        match by_topic.entry(info.topic) {
            Entry::Vacant(slot) => {
                slot.insert((payload, info));
            }
            Entry::Occupied(first) => {
                let (first_payload, first_info) = *first.get();
                // Command and event handlers skip the other types of a topic they share.
                let typed = |info: &HandlerInfo| info.role != Role::Handler;
                if first_payload != payload && !(typed(first_info) && typed(info)) {
                    problems.push(config(format!(
                        "topic `{}` is read as two payload types: `{}` by handler `{}` ({}) and `{}` by handler `{}` ({})",
                        info.topic,
                        first_info.payload.unwrap_or("?"),
                        first_info.name,
                        first_info.location(),
                        info.payload.unwrap_or("?"),
                        info.name,
                        info.location()
                    )));
                }
            }
        }
    }
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("from_registry", &self.from_registry)
            .field("services", &self.services)
            .field("module_prefixes", &self.prefixes)
            .field("handlers", &self.descriptors().iter().map(|d| d.info().name).collect::<Vec<_>>())
            .field("routes", &self.routes.len())
            .field("named_pubsubs", &self.named.keys().collect::<Vec<_>>())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Publishing typed values from outside a handler: a [`Topic`] type goes to its own topic, as JSON.
///
/// ```
/// # use millstream::prelude::*;
/// use millstream::app::PublishExt;
/// #[derive(Serialize)]
/// #[millstream::topic("orders.placed")]
/// struct OrderPlaced { id: u64 }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
/// let pubsub = MemoryPubSub::new();
/// pubsub.publish_value(&OrderPlaced { id: 1 }).await?; // to "orders.placed"
/// # Ok(()) }
/// ```
pub trait PublishExt: Publisher {
    /// Publishes `value` to `T`'s topic, encoded as JSON.
    fn publish_value<T: Topic + Serialize + ?Sized>(&self, value: &T) -> OpFuture<'_> {
        match JsonCodec.encode(value) {
            Ok(payload) => self.publish(T::NAME, crate::topic::typed_message(payload, T::MESSAGE_TYPE)),
            Err(error) => OpFuture::ready(Err(error)),
        }
    }
}

impl<P: Publisher + ?Sized> PublishExt for P {}
