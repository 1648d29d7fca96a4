//! The [`Router`]: reads each handler's subscription, runs the middleware chain and the handler,
//! publishes the outputs, then acks.
//!
//! Per message: handler → outputs published → ack (at-least-once). A handler error nacks (the
//! backend redelivers); a permanent error (a payload that does not decode, `Error::permanent`)
//! goes to the poison topic with the reason in its metadata, then acks; a panic is caught, logged
//! and nacked, and the router goes on.
//!
//! Shutdown ([`Router::shutdown`], or the end of [`Router::run_until`]'s signal) stops intake,
//! lets in-flight messages finish within [`RouterConfig::close_timeout`] (those still running then
//! are dropped and so nacked), then closes the publishers and subscribers.

mod route;
mod worker;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::route::config_error;
pub use self::route::Route;
use crate::context::RouteInfo;
use crate::error::{Error, ErrorKind, Result};
use crate::middleware::{Chain, Middleware};
use crate::pubsub::{PubSub, Publisher, Subscriber};
use crate::state::StateMap;

/// The metadata keys the router sets on messages it sends to the poison topic (defined in
/// [`keys::poison`](crate::keys::poison)).
pub use crate::keys::poison as poison_keys;

/// Router settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RouterConfig {
    /// How long shutdown waits for in-flight messages. Default 30 s.
    pub close_timeout: Duration,
    /// Where messages that failed permanently go (decode failures, `Error::permanent`).
    /// Default `Some("millstream.poison")`; `None` nacks them like any other failure.
    pub poison_topic: Option<String>,
    /// Redelivery delay asked for on nack, where the backend honours it. Default none.
    pub nack_delay: Option<Duration>,
    /// Pause before re-subscribing when a subscription ends unexpectedly. Default 500 ms.
    pub resubscribe_backoff: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            close_timeout: Duration::from_secs(30),
            poison_topic: Some("millstream.poison".to_owned()),
            nack_delay: None,
            resubscribe_backoff: Duration::from_millis(500),
        }
    }
}

/// Where the router is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Built, not started.
    Idle,
    /// Every handler is subscribed and reading.
    Running,
    /// Intake stopped; in-flight messages finishing.
    ShuttingDown,
    /// Done.
    Stopped,
}

/// Routes messages to handlers. Cheap to clone: clones control the same router, so one task can
/// run it while another adds handlers or shuts it down.
///
/// ```
/// use millstream::{MemoryPubSub, Route, Router};
/// # #[derive(serde::Deserialize)] struct Order { id: u64 }
/// async fn log_order(order: Order) {
///     println!("order {}", order.id);
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
/// let router = Router::new(MemoryPubSub::new());
/// router.add(Route::new("log", "orders", log_order))?;
/// router.run_until(async { /* a signal */ }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

/// A handler's own publisher and subscriber, closed with the router.
type Backends = (Option<Arc<dyn Publisher>>, Option<Arc<dyn Subscriber>>);

struct Inner {
    config: RouterConfig,
    publisher: Arc<dyn Publisher>,
    subscriber: Arc<dyn Subscriber>,
    state: Mutex<Arc<StateMap>>,
    middleware: Mutex<Vec<Arc<dyn Middleware>>>,
    pending: Mutex<Vec<Route>>,
    names: Mutex<HashSet<String>>,
    extra_backends: Mutex<Vec<Backends>>,
    status: watch::Sender<Status>,
    intake: CancellationToken,
    tracker: TaskTracker,
    tasks: Mutex<Vec<AbortHandle>>,
    health: Mutex<Vec<(String, Arc<AtomicBool>)>>,
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
    /// A router on one backend that both publishes and subscribes.
    pub fn new<P: PubSub>(pubsub: P) -> Self {
        let pubsub = Arc::new(pubsub);
        Self::with_backends(pubsub.clone(), pubsub)
    }

    /// A router publishing through `publisher` and subscribing through `subscriber`.
    pub fn with_backends(publisher: Arc<dyn Publisher>, subscriber: Arc<dyn Subscriber>) -> Self {
        Router {
            inner: Arc::new(Inner {
                config: RouterConfig::default(),
                publisher,
                subscriber,
                state: Mutex::new(Arc::new(StateMap::new())),
                middleware: Mutex::new(Vec::new()),
                pending: Mutex::new(Vec::new()),
                names: Mutex::new(HashSet::new()),
                extra_backends: Mutex::new(Vec::new()),
                status: watch::Sender::new(Status::Idle),
                intake: CancellationToken::new(),
                tracker: TaskTracker::new(),
                tasks: Mutex::new(Vec::new()),
                health: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Replaces the settings (builder style; before anything else is added).
    ///
    /// # Panics
    /// If the router was cloned already.
    pub fn config(mut self, config: RouterConfig) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("Router::config must be called before the router is shared")
            .config = config;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &RouterConfig {
        &self.inner.config
    }

    /// Adds application state, read by `State<T>` extractors (builder style).
    pub fn state<T: Clone + Send + Sync + 'static>(self, value: T) -> Self {
        self.insert_state(value);
        self
    }

    /// Adds application state. Handlers added later see it; running ones keep what they had.
    pub fn insert_state<T: Clone + Send + Sync + 'static>(&self, value: T) {
        let mut state = self.inner.state.lock();
        Arc::make_mut(&mut state).insert(value);
    }

    /// Adds a router-wide middleware; router-wide layers run outside per-handler ones, in the
    /// order they were added. Applies to handlers started afterwards.
    pub fn layer(self, layer: impl Middleware) -> Self {
        self.inner.middleware.lock().push(Arc::new(layer));
        self
    }

    /// Adds a router-wide middleware that is already shared.
    pub fn layer_arc(&self, layer: Arc<dyn Middleware>) {
        self.inner.middleware.lock().push(layer);
    }

    /// Adds a handler (builder style). See [`Router::add`].
    ///
    /// # Panics
    /// If the route is invalid; use [`Router::add`] to get the error instead.
    pub fn route(self, route: Route) -> Self {
        if let Err(error) = self.add(route) {
            panic!("{error:?}");
        }
        self
    }

    /// Adds a handler. Before the router runs, it waits for [`start`](Router::start); on a running
    /// router it starts at once (subscribing in the background).
    ///
    /// Fails at once for problems visible without state (a duplicate name, a missing publish
    /// topic); state problems are reported when the handler starts.
    pub fn add(&self, route: Route) -> Result<()> {
        let problems = route.check();
        if !problems.is_empty() {
            return Err(combine(problems));
        }
        if !self.inner.names.lock().insert(route.name.clone()) {
            return Err(config_error(format!("two handlers are named `{}`", route.name)));
        }
        match *self.inner.status.borrow() {
            Status::Idle => {
                self.inner.pending.lock().push(route);
                Ok(())
            }
            Status::Running => {
                let name = route.name.clone();
                match self.prepare(route) {
                    Ok(started) => {
                        self.spawn(started);
                        Ok(())
                    }
                    Err(problems) => {
                        self.inner.names.lock().remove(&name);
                        Err(combine(problems))
                    }
                }
            }
            Status::ShuttingDown | Status::Stopped => {
                Err(Error::new(ErrorKind::Closed, "the router is shutting down; no handler can be added"))
            }
        }
    }

    /// Liveness and readiness: ready once running with every subscription up.
    pub fn health(&self) -> Health {
        let status = self.status();
        let mut handlers: Vec<(String, bool)> = self
            .inner
            .health
            .lock()
            .iter()
            .map(|(name, up)| (name.clone(), up.load(std::sync::atomic::Ordering::Acquire)))
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

    /// Checks every handler, subscribes them all, and starts reading. Returns once running.
    ///
    /// Every problem (a `State<T>` never provided, ...) is reported in one error, before any
    /// message is read.
    pub async fn start(&self) -> Result<()> {
        if self.status() != Status::Idle {
            return Err(Error::new(ErrorKind::Config, "the router was already started"));
        }
        let routes = std::mem::take(&mut *self.inner.pending.lock());
        let mut problems = Vec::new();
        let mut prepared = Vec::new();
        for route in routes {
            match self.prepare(route) {
                Ok(p) => prepared.push(p),
                Err(errors) => problems.extend(errors),
            }
        }
        if prepared.is_empty() && problems.is_empty() {
            problems.push(config_error("the router has no handlers".to_owned()));
        }
        if !problems.is_empty() {
            return Err(combine(problems));
        }
        // Subscribe everything first, so that a failure starts nothing.
        let mut subscribed = Vec::with_capacity(prepared.len());
        for p in prepared {
            let subscription = worker::subscribe(&p).await?;
            subscribed.push((p, subscription));
        }
        for (p, subscription) in subscribed {
            self.spawn_with(p, Some(subscription));
        }
        self.inner.status.send_replace(Status::Running);
        tracing::info!(handlers = self.inner.names.lock().len(), "router running");
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
    /// and returns.
    pub fn shutdown(&self) {
        self.inner.intake.cancel();
    }

    /// Stops intake, waits up to the close timeout for in-flight messages (outputs published and
    /// acked), then closes publishers and subscribers. Safe to call more than once.
    pub async fn close(&self) -> Result<()> {
        if matches!(self.status(), Status::Stopped) {
            return Ok(());
        }
        self.inner.status.send_replace(Status::ShuttingDown);
        self.inner.intake.cancel();
        self.inner.tracker.close();
        let timeout = self.inner.config.close_timeout;
        let drained = tokio::time::timeout(timeout, self.inner.tracker.wait()).await.is_ok();
        let mut outcome = Ok(());
        if !drained {
            let tasks = std::mem::take(&mut *self.inner.tasks.lock());
            tasks.iter().for_each(AbortHandle::abort);
            self.inner.tracker.wait().await;
            tracing::warn!(?timeout, "close timeout passed; unfinished messages were nacked");
            outcome = Err(Error::new(
                ErrorKind::Timeout,
                format!("in-flight messages did not finish within {timeout:?}; they were nacked"),
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

    fn prepare(&self, route: Route) -> Result<worker::Prepared, Vec<Error>> {
        let state = self.inner.state.lock().clone();
        let name = route.name.clone();
        let route_name = route.name.clone();
        let endpoint = (route.build)(&state).map_err(|errors| {
            errors.into_iter().map(|e| e.context(format_args!("handler `{name}`"))).collect::<Vec<_>>()
        })?;
        let up = Arc::new(AtomicBool::new(false));
        self.inner.health.lock().push((route_name.clone(), up.clone()));
        if route.publisher.is_some() || route.subscriber.is_some() {
            self.inner.extra_backends.lock().push((route.publisher.clone(), route.subscriber.clone()));
        }
        let publisher = route.publisher.unwrap_or_else(|| self.inner.publisher.clone());
        let subscriber = route.subscriber.unwrap_or_else(|| self.inner.subscriber.clone());
        let publish = match (&route.publish, route.output) {
            (Some(topic), _) => Some(Arc::from(topic.as_str())),
            (None, crate::handler::OutputSpec::Topic(topic)) => Some(Arc::from(topic)),
            _ => None,
        };
        let mut middleware: Vec<_> = self.inner.middleware.lock().clone();
        middleware.extend(route.middleware);
        let facts = crate::middleware::layer_facts(&middleware);
        let info = Arc::new(RouteInfo {
            name: Arc::from(route.name.as_str()),
            topic: Arc::from(route.topic.as_str()),
            publish,
            publisher: publisher.clone(),
            encoder: route.encoder,
            shutdown: self.inner.intake.clone(),
            correlates: facts.correlates,
        });
        let chain = Arc::new(Chain::new(middleware, endpoint, info.clone()));
        Ok(worker::Prepared {
            group: route.group.unwrap_or(route.name),
            concurrency: route.concurrency.get(),
            subscriber,
            publisher,
            chain,
            info,
            config: self.inner.config.clone(),
            intake: self.inner.intake.clone(),
            metrics: crate::observe::RouteMetrics::new(&route_name),
            instant_ack: facts.acks_instantly,
            up,
        })
    }

    fn spawn(&self, prepared: worker::Prepared) {
        self.spawn_with(prepared, None);
    }

    fn spawn_with(&self, prepared: worker::Prepared, subscription: Option<crate::pubsub::Subscription>) {
        let handle =
            self.inner.tracker.spawn(worker::run(prepared, subscription, self.inner.tracker.clone()));
        self.inner.tasks.lock().push(handle.abort_handle());
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
            .field("handlers", &self.inner.names.lock().len())
            .field("config", &self.inner.config)
            .finish()
    }
}
