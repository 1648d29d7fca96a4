//! The [`Router`]: the running handle of an app. It reads each handler's subscription, runs the
//! middleware chain and the handler, publishes the outputs, then acks.
//!
//! A router is made by [`App::build`](crate::App::build) (the one builder: backends, state,
//! layers, handlers, settings) and is then only driven: [`start`](Router::start),
//! [`add`](Router::add) a handler at run time, [`shutdown`](Router::shutdown),
//! [`close`](Router::close), [`health`](Router::health). Clones drive the same router.
//!
//! Per message: handler → outputs published → ack (at-least-once). A handler error nacks (the
//! backend redelivers); a permanent error (a payload that does not decode, `Error::permanent`)
//! goes to the poison topic with the reason in its metadata, then acks; a panic is caught, logged
//! and nacked, and the router goes on.
//!
//! Shutdown ([`Router::shutdown`], or the end of [`Router::run_until`]'s signal) stops intake,
//! lets in-flight messages finish within [`RouterConfig::close_timeout`] (those still running then
//! are aborted and their deliveries released, and the releases sent), then closes the publishers and subscribers.

mod batch;
mod config;
mod forward;
mod group;
mod lanes;
mod reader;
mod retry;
mod route;
mod worker;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;

pub use self::config::RouterConfig;

/// The longest retry delay a retry topic's handler waits out holding the delivery; longer ones
/// need a delay store ([`Route::retry_topics`]).
pub const MAX_RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
pub use self::forward::{Forwarder, FORWARDER_GROUP};
pub use self::group::UnknownEvents;
pub(crate) use self::group::{event_group, Member};
pub use self::retry::{delay_label, retry_topic};
use self::route::config_error;
pub use self::route::{HandlerSummary, Location, Route, DEFAULT_BATCH_SIZE, DEFAULT_LINGER};
use crate::context::RouteInfo;
use crate::error::{Error, ErrorKind, Result};
/// The metadata keys the router sets on messages it sends to the poison topic (defined in
/// [`keys::poison`](crate::keys::poison)).
pub use crate::keys::poison as poison_keys;
use crate::middleware::{layer_facts, Chain, Middleware, Next};
use crate::pubsub::{Attempts, Features, Publisher, Subscriber, Subscription};
use crate::state::StateMap;

/// Where the router is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Built, not started (or a start failed and may be tried again).
    Idle,
    /// Every handler is subscribed and reading.
    Running,
    /// Intake stopped; in-flight messages finishing.
    ShuttingDown,
    /// Done.
    Stopped,
}

/// The running handle of an app: made by [`App::build`](crate::App::build), then started, driven
/// and shut down. Cheap to clone: clones drive the same router, so one task can run it while
/// another adds handlers, reads its health or shuts it down.
///
/// ```
/// use millstream::{App, MemoryPubSub, Route};
/// # #[derive(serde::Deserialize)] struct Order { id: u64 }
/// async fn log_order(order: Order) {
///     println!("order {}", order.id);
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
/// let router = App::new().pubsub(MemoryPubSub::new()).route(Route::new("log", "orders", log_order)).build()?;
/// router.start().await?;
/// // ... publish through `router.publisher()`, read `router.health()` ...
/// router.shutdown();
/// router.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

/// How long [`Router::close`] waits, after aborting handlers, for their deliveries' releases to
/// reach the backends.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A handler's own publisher and subscriber, closed with the router.
type Backends = (Option<Arc<dyn Publisher>>, Option<Arc<dyn Subscriber>>);

/// What [`App::build`](crate::App::build) hands to the router it makes.
pub(crate) struct Parts {
    /// The default publisher and subscriber are one backend.
    pub(crate) paired: bool,
    pub(crate) config: RouterConfig,
    pub(crate) publisher: Arc<dyn Publisher>,
    pub(crate) subscriber: Arc<dyn Subscriber>,
    pub(crate) state: StateMap,
    /// App-wide layers, outermost first.
    pub(crate) layers: Vec<Arc<dyn Middleware>>,
}

struct Inner {
    paired: bool,
    config: RouterConfig,
    publisher: Arc<dyn Publisher>,
    subscriber: Arc<dyn Subscriber>,
    state: StateMap,
    layers: Box<[Arc<dyn Middleware>]>,
    handlers: Mutex<Handlers>,
    extra_backends: Mutex<Vec<Backends>>,
    status: watch::Sender<Status>,
    /// Held by a start from beginning to end, so that two starts cannot interleave.
    starting: tokio::sync::Mutex<()>,
    intake: worker::Intake,
    tracker: TaskTracker,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// The handlers a router knows, and those still waiting to start.
#[derive(Default)]
struct Handlers {
    names: HashSet<String>,
    /// Every handler added, in order.
    summaries: Vec<HandlerSummary>,
    /// Added before the start, not prepared yet.
    pending: Vec<Route>,
    /// Prepared by a start that then failed to subscribe: the next start subscribes them.
    prepared: Vec<worker::Prepared>,
    /// Each started handler and whether its subscription is up.
    health: Vec<(String, Arc<AtomicBool>)>,
    /// Each started handler's chain (its layers around it), for [`Router::service`].
    chains: Vec<(String, Arc<Chain>)>,
}

/// What [`Router::health`] reports: for liveness and readiness probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The router is running or finishing in-flight work (not stopped, not failed to start).
    pub live: bool,
    /// The router is running and every handler's subscription is up.
    pub ready: bool,
    /// Each handler and whether its subscription is up, sorted by name.
    pub handlers: Vec<(String, bool)>,
}

impl Router {
    /// A router with its parts (see [`App::build`](crate::App::build)) and no handlers yet.
    pub(crate) fn new(parts: Parts) -> Self {
        Router {
            inner: Arc::new(Inner {
                paired: parts.paired,
                config: parts.config,
                publisher: parts.publisher,
                subscriber: parts.subscriber,
                state: parts.state,
                layers: parts.layers.into(),
                handlers: Mutex::new(Handlers::default()),
                extra_backends: Mutex::new(Vec::new()),
                status: watch::Sender::new(Status::Idle),
                starting: tokio::sync::Mutex::new(()),
                intake: worker::Intake::default(),
                tracker: TaskTracker::new(),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &RouterConfig {
        &self.inner.config
    }

    /// The default publisher, for publishing from outside a handler (see
    /// [`PublishExt`](crate::PublishExt) for typed values).
    pub fn publisher(&self) -> &Arc<dyn Publisher> {
        &self.inner.publisher
    }

    /// Every handler of the router, in the order they were added, with their effective settings.
    pub fn handlers(&self) -> Vec<HandlerSummary> {
        self.inner.handlers.lock().summaries.clone()
    }

    /// Adds a handler. Before the start, it waits for [`start`](Router::start); on a running
    /// router it starts at once (subscribing in the background), with the app's state and layers.
    ///
    /// Every problem of the handler (a duplicate name, a missing publish topic, a `State<T>` the
    /// app was not given) is reported here, in one error, and the handler is not added.
    pub fn add(&self, route: Route) -> Result<()> {
        let mut problems = route.check();
        problems.extend(self.retry_problems(&route));
        problems.extend(self.state_problems(&route));
        problems.extend(self.backend_problems(&route));
        if !problems.is_empty() {
            return Err(combine(problems));
        }
        let mut handlers = self.inner.handlers.lock();
        // (A handler with retry topics runs under one more name per retry topic.)
        let stage_names: Vec<String> = route
            .retry_delays
            .iter()
            .map(|delay| format!("{}.retry.{}", route.name, retry::delay_label(*delay)))
            .collect();
        if let Some(taken) = std::iter::once(&route.name)
            .chain(&stage_names)
            .find(|name| handlers.names.contains(name.as_str()))
        {
            return Err(config_error(format!("two handlers are named `{taken}`")));
        }
        handlers.names.insert(route.name.clone());
        handlers.names.extend(stage_names.iter().cloned());
        match self.status() {
            Status::Idle => {
                handlers.summaries.push(route.summary());
                handlers.pending.push(route);
                Ok(())
            }
            Status::Running => {
                let summary = route.summary();
                let prepared = self.prepare(route, &mut handlers);
                handlers.summaries.push(summary.clone());
                drop(handlers);
                tracing::info!(handler = %summary.name, "handler added: {summary}");
                for stage in prepared {
                    self.spawn(stage, None);
                }
                Ok(())
            }
            Status::ShuttingDown | Status::Stopped => {
                handlers.names.remove(&route.name);
                for name in &stage_names {
                    handlers.names.remove(name);
                }
                Err(Error::new(ErrorKind::Closed, "the router is shutting down; no handler can be added"))
            }
        }
    }

    /// Whether the route publishes where it reads: its own publisher and subscriber from one
    /// backend, or neither (the router's, when they are one backend).
    fn paired(&self, route: &Route) -> bool {
        match (&route.publisher, &route.subscriber) {
            (None, None) => self.inner.paired,
            _ => route.paired,
        }
    }

    /// Retry topics need a route that reads what it publishes, and long ones a delay store.
    fn retry_problems(&self, route: &Route) -> Vec<Error> {
        let Some(longest) = route.retry_delays.iter().max() else { return Vec::new() };
        let mut problems = Vec::new();
        if !self.paired(route) {
            problems.push(config_error(format!(
                "{} has retry topics, but it reads from one backend and publishes to another: the retries would \
                 go where it does not read",
                route.origin()
            )));
        }
        let publisher = route.publisher.as_ref().unwrap_or(&self.inner.publisher);
        if *longest > MAX_RETRY_WAIT && !publisher.delays() {
            problems.push(config_error(format!(
                "{} has a retry topic of {}: a message would wait there longer than brokers hold a delivery \
                 (Redis claims it for another consumer after 30 s); give the app a delay store (`.delays(..)`), \
                 through which retries arrive when due, or keep retry delays at {} or less",
                route.origin(),
                retry::delay_label(*longest),
                retry::delay_label(MAX_RETRY_WAIT)
            )));
        }
        problems
    }

    /// What the handler asks of its backend that the backend's [`Features`] say it cannot honour:
    /// a layer that decides on attempt counts where the backend keeps none.
    fn backend_problems(&self, route: &Route) -> Vec<Error> {
        let subscriber = route.subscriber.as_ref().unwrap_or(&self.inner.subscriber);
        let features = subscriber.features();
        let layers: Vec<_> = self.inner.layers.iter().chain(&route.middleware).cloned().collect();
        let facts = layer_facts(&layers);
        let mut problems = Vec::new();
        if route.order_by_key && !(features.ordered || features.ordered_per_key) {
            problems.push(config_error(format!(
                "{}: orders by key, but the `{}` backend does not deliver in order",
                route.origin(),
                backend_name(&features),
            )));
        }
        if let (Some(layer), Attempts::Unknown) = (facts.reads_attempts, features.attempts) {
            problems.push(config_error(format!(
                "{}: `{layer}` decides on the delivery attempt, but the `{}` backend does not count \
                 attempts (every delivery says 1); count them in a store with a `CountAttempts` layer \
                 outside it, or retry in the process with `Retry` instead",
                route.origin(),
                backend_name(&features),
            )));
        }
        problems
    }

    /// What the handler's extractors would report with the app's state, each naming the handler.
    fn state_problems(&self, route: &Route) -> Vec<Error> {
        let origin = route.origin();
        route.check_state(&self.inner.state).into_iter().map(|e| e.context(&origin)).collect()
    }

    /// The started handler `name` with every layer around it, as a [`Next`]: call it directly
    /// with a message (`next.run(message)`), without a subscription and without settling
    /// anything, to reuse a handler from other code (an HTTP endpoint, a test). With the `tower`
    /// feature, a `Next` is a `tower::Service<Message>`. `None` before the start or for an unknown
    /// name.
    pub fn service(&self, name: &str) -> Option<Next> {
        let handlers = self.inner.handlers.lock();
        handlers.chains.iter().find(|(n, _)| n == name).map(|(_, chain)| chain.next(1))
    }

    /// Liveness and readiness: ready once running with every subscription up.
    pub fn health(&self) -> Health {
        let status = self.status();
        let mut handlers: Vec<(String, bool)> = self
            .inner
            .handlers
            .lock()
            .health
            .iter()
            .map(|(name, up)| (name.clone(), up.load(Ordering::Acquire)))
            .collect();
        handlers.sort();
        let all_up = handlers.iter().all(|(_, up)| *up);
        Health {
            live: matches!(status, Status::Running | Status::ShuttingDown),
            ready: status == Status::Running && all_up,
            handlers,
        }
    }

    /// The current status.
    pub fn status(&self) -> Status {
        *self.inner.status.borrow()
    }

    /// Resolves once every handler is subscribed (or at once if the router is past that point).
    pub async fn running(&self) {
        let mut status = self.inner.status.subscribe();
        let _ = status.wait_for(|s| *s != Status::Idle).await;
    }

    /// Subscribes every handler and starts reading; returns once running. Each handler is logged
    /// at `info` (name, topic, group, publish topic, where it was declared).
    ///
    /// If a subscription fails, nothing starts, the error says which handler failed, and the
    /// router stays [`Idle`](Status::Idle): `start` may be called again (the backend may be back).
    pub async fn start(&self) -> Result<()> {
        let _starting = self.inner.starting.lock().await;
        if self.status() != Status::Idle {
            return Err(Error::new(ErrorKind::Config, "the router was already started"));
        }
        let mut prepared = {
            let mut handlers = self.inner.handlers.lock();
            let routes = std::mem::take(&mut handlers.pending);
            let mut prepared = std::mem::take(&mut handlers.prepared);
            for route in routes {
                prepared.extend(self.prepare(route, &mut handlers));
            }
            prepared
        };
        if prepared.is_empty() {
            return Err(config_error("the router has no handlers".to_owned()));
        }
        // Subscribe everything first, so that a failure starts nothing.
        let mut subscriptions: Vec<Subscription> = Vec::with_capacity(prepared.len());
        for p in &prepared {
            match reader::subscribe(p).await {
                Ok(subscription) => subscriptions.push(subscription),
                Err(error) => {
                    drop(subscriptions);
                    self.inner.handlers.lock().prepared.append(&mut prepared);
                    return Err(error.context("the router did not start (start may be called again)"));
                }
            }
        }
        let count = prepared.len();
        for (p, subscription) in prepared.into_iter().zip(subscriptions) {
            // Subscribed: ready from now on, not from when the worker first runs.
            p.up.store(true, Ordering::Release);
            self.spawn(p, Some(subscription));
        }
        // Handlers added while this start was subscribing: `add` reads the status under the
        // same lock, so each is either taken here or started by `add` itself.
        let late: Vec<_> = {
            let mut handlers = self.inner.handlers.lock();
            self.inner.status.send_replace(Status::Running);
            let routes = std::mem::take(&mut handlers.pending);
            routes.into_iter().flat_map(|route| self.prepare(route, &mut handlers)).collect()
        };
        for p in late {
            self.spawn(p, None);
        }
        for summary in self.handlers() {
            tracing::info!(handler = %summary.name, "handler running: {summary}");
        }
        tracing::info!(handlers = count, "router running");
        Ok(())
    }

    /// Starts, runs until `signal` resolves (or [`shutdown`](Router::shutdown) is called), then
    /// shuts down gracefully.
    pub async fn run_until<F: Future>(&self, signal: F) -> Result<()> {
        self.start().await?;
        tokio::select! {
            _ = signal => {}
            _ = self.inner.intake.cancelled() => {}
        }
        self.close().await
    }

    /// Runs until [`shutdown`](Router::shutdown) is called.
    pub async fn run(&self) -> Result<()> {
        self.run_until(std::future::pending::<()>()).await
    }

    /// Runs until ctrl-c (SIGINT), then shuts down gracefully.
    pub async fn run_until_ctrl_c(&self) -> Result<()> {
        self.run_until(async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for ctrl-c; running until shutdown() instead");
                std::future::pending::<()>().await;
            }
            tracing::info!("ctrl-c: shutting down");
        })
        .await
    }

    /// Asks the router to stop: intake stops at once; `run_until` then finishes in-flight work
    /// and returns. Call [`close`](Router::close) to wait for that when driving the router
    /// with [`start`](Router::start).
    pub fn shutdown(&self) {
        self.inner.intake.stop();
    }

    /// Stops intake, waits up to the close timeout for in-flight messages (outputs published and
    /// acked), then closes publishers and subscribers. Safe to call more than once.
    pub async fn close(&self) -> Result<()> {
        if matches!(self.status(), Status::Stopped) {
            return Ok(());
        }
        self.inner.status.send_replace(Status::ShuttingDown);
        self.inner.intake.stop();
        self.inner.tracker.close();
        let timeout = self.inner.config.close_timeout;
        let drained = tokio::time::timeout(timeout, self.inner.tracker.wait()).await.is_ok();
        let mut outcome = Ok(());
        if !drained {
            let tasks = std::mem::take(&mut *self.inner.tasks.lock());
            tasks.iter().for_each(AbortHandle::abort);
            self.inner.tracker.wait().await;
            // The aborted handlers' deliveries were dropped, and their releases spawned: they
            // must reach the backends before these close, or the messages wait out their leases.
            if !crate::pubsub::delivery::dropped::settled(RELEASE_WAIT).await {
                tracing::warn!(limit = ?RELEASE_WAIT, "releases of unfinished messages still pending; closing anyway");
            }
            tracing::warn!(?timeout, "close timeout passed; unfinished messages were released");
            outcome = Err(Error::new(
                ErrorKind::Timeout,
                format!("in-flight messages did not finish within {timeout:?}; they were released"),
            ));
        }
        let extra = std::mem::take(&mut *self.inner.extra_backends.lock());
        for (publisher, subscriber) in extra {
            if let Some(p) = publisher {
                log_close(p.close().await, "publisher");
            }
            if let Some(s) = subscriber {
                log_close(s.close().await, "subscriber");
            }
        }
        log_close(self.inner.publisher.close().await, "publisher");
        log_close(self.inner.subscriber.close().await, "subscriber");
        self.inner.status.send_replace(Status::Stopped);
        tracing::info!("router stopped");
        outcome
    }

    /// Builds the handler's chain (app-wide layers outside its own) and its worker's settings:
    /// one worker, or one per stage for a handler with retry topics (sharing its endpoint).
    /// The state was checked when the route was added, so building cannot fail.
    fn prepare(&self, route: Route, handlers: &mut Handlers) -> Vec<worker::Prepared> {
        let paired = self.paired(&route);
        let endpoint = match (route.build)(&self.inner.state) {
            Ok(endpoint) => endpoint,
            Err(errors) => unreachable!("state checked when the handler was added: {}", combine(errors)),
        };
        if route.publisher.is_some() || route.subscriber.is_some() {
            self.inner.extra_backends.lock().push((route.publisher.clone(), route.subscriber.clone()));
        }

        let publisher = route.publisher.unwrap_or_else(|| self.inner.publisher.clone());
        let subscriber = route.subscriber.unwrap_or_else(|| self.inner.subscriber.clone());
        let mut layers: Vec<_> = self.inner.layers.to_vec();
        layers.extend(route.middleware);
        let facts = layer_facts(&layers);
        let group = route.group.unwrap_or_else(|| route.name.clone());
        let (handler, group_name): (Arc<str>, Arc<str>) =
            (Arc::from(route.name.as_str()), Arc::from(group.as_str()));
        if route.batch.is_some() && !self.inner.layers.is_empty() {
            tracing::warn!(handler = %route.name, "the app's middleware does not wrap a batch handler (middleware wraps one message at a time): its redelivery caps, poison rules and the like do not apply to it");
        }
        let stages = match (route.retry_delays.is_empty(), route.dead_letter.as_deref()) {
            (true, None) => vec![(route.name, route.topic, None)],
            (_, dead_letter) => retry::stages(&route.name, &route.topic, &route.retry_delays, dead_letter)
                .into_iter()
                .map(|stage| (stage.name, stage.topic, Some(stage.retry)))
                .collect(),
        };
        // (Retry topics take a handler's failures; a requeue would only reorder them again.)
        let requeue_after = self.inner.config.requeue_after.filter(|_| {
            publisher.delays() && route.retry_delays.is_empty() && paired && route.batch.is_none()
        });

        stages
            .into_iter()
            .map(|(name, topic, retry)| {
                let up = Arc::new(AtomicBool::new(false));
                handlers.health.push((name.clone(), up.clone()));
                let info = Arc::new(RouteInfo {
                    name: Arc::from(name.as_str()),
                    handler: handler.clone(),
                    group: group_name.clone(),
                    topic: Arc::from(topic.as_str()),
                    publish: route.publish.as_deref().map(Arc::from),
                    publisher: publisher.clone(),
                    encoder: route.encoder.clone(),
                    shutdown: self.inner.intake.token().clone(),
                    correlates: facts.correlates,
                });
                let chain = Arc::new(Chain::new(layers.clone(), endpoint.clone(), info.clone()));
                handlers.chains.push((name.clone(), chain.clone()));
                worker::Prepared {
                    metrics: crate::observe::RouteMetrics::new(&name),
                    group: group.clone(),
                    concurrency: route.concurrency.get(),
                    subscriber: subscriber.clone(),
                    publisher: publisher.clone(),
                    chain,
                    info,
                    config: self.inner.config.clone(),
                    intake: self.inner.intake.clone(),
                    order_by_key: route.order_by_key,
                    instant_ack: facts.acks_instantly,
                    up,
                    requeue_after,
                    retry,
                    transactional: route.units > 0,
                    batch: route.batch,
                }
            })
            .collect()
    }

    fn spawn(&self, prepared: worker::Prepared, subscription: Option<Subscription>) {
        let handle = self.inner.tracker.spawn(reader::run(prepared, subscription));
        self.inner.tasks.lock().push(handle.abort_handle());
    }
}

/// The backend's name for messages (`unnamed` when a third-party backend leaves it empty).
fn backend_name(features: &Features) -> &'static str {
    if features.backend.is_empty() {
        "unnamed"
    } else {
        features.backend
    }
}

fn log_close(result: Result<()>, what: &str) {
    if let Err(error) = result {
        tracing::warn!(%error, "closing a {what} failed");
    }
}

/// One error listing several problems (or the one problem itself).
pub(crate) fn combine(mut problems: Vec<Error>) -> Error {
    if problems.len() == 1 {
        return problems.pop().expect("one problem");
    }
    let mut text = format!("{} problems:", problems.len());
    for problem in &problems {
        text.push_str("\n  - ");
        text.push_str(problem.message());
    }
    Error::new(ErrorKind::Config, text)
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("status", &self.status())
            .field("handlers", &self.handlers())
            .field("config", &self.inner.config)
            .finish()
    }
}
