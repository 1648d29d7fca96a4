//! The connection: made on demand, made again (with backoff) once it or its publishing channel
//! has closed. Each connection has a generation number; what was declared is remembered per
//! generation.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use parking_lot::Mutex;

use super::config::AmqpConfig;
use super::topology::{Declarer, Route};
use crate::error::{Error, ErrorKind, Result};

/// A live connection and its publishing channel (in confirm mode).
#[derive(Clone)]
pub(crate) struct Live {
    pub(crate) connection: Arc<Connection>,
    pub(crate) publisher: Channel,
    pub(crate) generation: u64,
}

impl Live {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

/// Failed connection attempts: no new attempt before `retry_at` (backoff for publishers, which
/// call [`Link::live`] on every publish while the server is away).
#[derive(Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
    last_error: String,
}

pub(crate) struct Link {
    pub(crate) config: AmqpConfig,
    live: tokio::sync::Mutex<Option<Live>>,
    backoff: Mutex<Backoff>,
    /// What was declared, per generation: `("publish", topic)`, `("retry", queue name)`.
    declared: Mutex<(u64, HashSet<(&'static str, String)>)>,
    generations: std::sync::atomic::AtomicU64,
}

pub(crate) fn amqp_error(error: lapin::Error) -> Error {
    Error::backend(error)
}

impl Link {
    pub(crate) fn new(config: AmqpConfig) -> Self {
        Link {
            config,
            live: tokio::sync::Mutex::new(None),
            backoff: Mutex::new(Backoff::default()),
            declared: Mutex::new((0, HashSet::new())),
            generations: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The live connection, connecting (once, not retrying) when there is none.
    pub(crate) async fn live(&self) -> Result<Live> {
        let mut guard = self.live.lock().await;
        if let Some(live) = guard.as_ref() {
            if live.usable() {
                return Ok(live.clone());
            }
            if live.connection.status().connected() {
                // Only the publishing channel closed (a refused publish): open another.
                let reopen = confirm_channel(&live.connection);
                match tokio::time::timeout(self.config.connect_timeout, reopen).await {
                    Ok(publisher) => {
                        let live = Live { publisher: publisher?, ..live.clone() };
                        *guard = Some(live.clone());
                        return Ok(live);
                    }
                    Err(_) => {
                        let dead = guard.take().expect("checked above");
                        close_in_background(dead);
                        return Err(
                            self.timed_out("opening a publishing channel", self.config.connect_timeout)
                        );
                    }
                }
            }
            tracing::info!(uri = %self.config.uri, "AMQP: connection lost; reconnecting");
        }
        *guard = None;
        {
            let backoff = self.backoff.lock();
            if let Some(at) = backoff.retry_at {
                let now = tokio::time::Instant::now();
                if now < at {
                    return Err(Error::new(
                        ErrorKind::Backend,
                        format!(
                            "AMQP: not connected; next attempt in {:?} (last: {})",
                            at - now,
                            backoff.last_error
                        ),
                    ));
                }
            }
        }
        match self.connect().await {
            Ok(live) => {
                *self.backoff.lock() = Backoff::default();
                *guard = Some(live.clone());
                Ok(live)
            }
            Err(error) => {
                let mut backoff = self.backoff.lock();
                backoff.failures += 1;
                let wait =
                    Duration::from_millis(100u64 << backoff.failures.min(7)).min(self.config.max_backoff);
                backoff.retry_at = Some(tokio::time::Instant::now() + wait);
                backoff.last_error = error.to_string();
                Err(error)
            }
        }
    }

    async fn connect(&self) -> Result<Live> {
        let properties =
            ConnectionProperties::default().with_connection_name(self.config.connection_name.as_str().into());
        // The connection and its publishing channel, both within the timeout: a server that is
        // still starting may take the connection and not answer the channel's open.
        let connect = async {
            let connection =
                Connection::connect(self.config.uri.expose(), properties).await.map_err(|error| {
                    amqp_error(error).context(format!("AMQP: connecting to {}", self.config.uri))
                })?;
            let connection = Arc::new(connection);
            match confirm_channel(&connection).await {
                Ok(publisher) => Ok((connection, publisher)),
                Err(error) => {
                    let _ = connection.close(200, "no publishing channel".into()).await;
                    Err(error)
                }
            }
        };
        let (connection, publisher) = match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "AMQP: connecting to {} took over {:?}",
                        self.config.uri, self.config.connect_timeout
                    ),
                ));
            }
        };
        let generation = self.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        Ok(Live { connection, publisher, generation })
    }

    /// The live connection, waiting (with backoff) until there is one or `cancel` fires.
    pub(crate) async fn live_or_wait(&self, cancel: &tokio_util::sync::CancellationToken) -> Option<Live> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.live().await {
                Ok(live) => return Some(live),
                Err(error) => tracing::debug!(%error, "AMQP: reconnecting failed; retrying in {backoff:?}"),
            }
            if let Some(at) = self.backoff.lock().retry_at {
                backoff = backoff.max(at.saturating_duration_since(tokio::time::Instant::now()));
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = cancel.cancelled() => return None,
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    /// Runs `declare` once per generation for `key`.
    pub(crate) async fn declare_once<F, Fut>(
        &self,
        live: &Live,
        key: (&'static str, String),
        declare: F,
    ) -> Result<()>
    where
        F: FnOnce(Declarer) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        {
            let declared = self.declared.lock();
            if declared.0 == live.generation && declared.1.contains(&key) {
                return Ok(());
            }
        }
        let declarer = Declarer::open(&live.connection).await?;
        declare(declarer).await?;
        let mut declared = self.declared.lock();
        if declared.0 != live.generation {
            *declared = (live.generation, HashSet::new());
        }
        declared.1.insert(key);
        Ok(())
    }

    /// Runs `step` on `live` for at most `limit`; past it, drops that connection (when it is
    /// still the current one: the next call connects again) and fails with a timeout.
    pub(crate) async fn bounded<T>(
        &self,
        live: &Live,
        limit: Duration,
        what: &str,
        step: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, step).await {
            Ok(result) => result,
            Err(_) => {
                self.abandon(live).await;
                Err(self.timed_out(what, limit))
            }
        }
    }

    /// Drops `live` if it is still the current connection, closing it in the background.
    async fn abandon(&self, live: &Live) {
        let mut guard = self.live.lock().await;
        if guard.as_ref().is_some_and(|current| current.generation == live.generation) {
            if let Some(dead) = guard.take() {
                close_in_background(dead);
            }
        }
    }

    fn timed_out(&self, what: &str, limit: Duration) -> Error {
        tracing::warn!(uri = %self.config.uri, "AMQP: {what} took over {limit:?}; dropping the connection");
        Error::new(
            ErrorKind::Timeout,
            format!(
                "AMQP: {what} on {} took over {limit:?}; the connection was dropped and will be made again",
                self.config.uri
            ),
        )
    }

    /// Forgets what was declared (an exchange may have been deleted behind our back).
    pub(crate) fn forget_declarations(&self) {
        self.declared.lock().1.clear();
    }

    /// Publishes, mandatory, and waits for the broker's confirm (at most
    /// [`AmqpConfig::publish_timeout`]).
    pub(crate) async fn publish_confirmed(
        &self,
        live: &Live,
        route: &Route,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        let publish = async {
            let confirm = self.send(live, route, payload, properties).await?;
            check_confirm(confirm.await.map_err(amqp_error)?, route)
        };
        self.bounded(live, self.config.publish_timeout, "a publish awaiting its confirm", publish).await
    }

    /// Sends one mandatory publish; the returned future resolves with the broker's confirm.
    pub(crate) async fn send(
        &self,
        live: &Live,
        route: &Route,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<lapin::PublisherConfirm> {
        let exchange = short(&route.exchange, "exchange")?;
        let routing_key = short(&route.routing_key, "routing key")?;
        live.publisher
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions { mandatory: true, immediate: false },
                payload,
                properties,
            )
            .await
            .map_err(amqp_error)
    }

    pub(crate) async fn close(&self) {
        if let Some(live) = self.live.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), live.connection.close(200, "closed".into()))
                .await;
        }
    }
}

pub(crate) fn check_confirm(confirmation: Confirmation, route: &Route) -> Result<()> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(Error::new(
            ErrorKind::Backend,
            format!(
                "AMQP: unroutable: no queue is bound for routing key {:?} on exchange {:?} ({} {}); \
                 nothing would have received the message",
                route.routing_key, route.exchange, returned.reply_code, returned.reply_text
            ),
        )),
        Confirmation::Nack(_) => Err(Error::new(
            ErrorKind::Backend,
            format!(
                "AMQP: the broker refused (nacked) a message to {:?}/{:?}",
                route.exchange, route.routing_key
            ),
        )),
    }
}

fn short(text: &str, what: &str) -> Result<ShortString> {
    ShortString::try_new(text).map_err(|_| {
        Error::new(ErrorKind::Config, format!("AMQP: {what} {text:?} is over AMQP's limit of 255 bytes"))
            .into_permanent()
    })
}

/// Closes a connection given up on, without waiting for it (a dead one never answers).
fn close_in_background(dead: Live) {
    tokio::spawn(async move {
        let close = dead.connection.close(320, "millstream: the connection stopped answering".into());
        let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
    });
}

async fn confirm_channel(connection: &Connection) -> Result<Channel> {
    let channel = connection.create_channel().await.map_err(amqp_error)?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(amqp_error)?;
    Ok(channel)
}
