//! What every MQTT connection of the backend shares: rumqttc options from the config, the
//! reconnection backoff, error mapping, and the process-wide claims on session client ids.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use parking_lot::Mutex;
use rumqttc::v5::{AsyncClient, EventLoop, MqttOptions};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use super::config::MqttConfig;
use crate::error::{Error, ErrorKind};

/// How one connection starts.
pub(super) struct Session {
    pub(super) client_id: String,
    /// `false` resumes the broker's session (clean start off).
    pub(super) clean_start: bool,
    /// How long the broker keeps the session after a disconnect; `None`: it ends with the
    /// connection.
    pub(super) expiry: Option<Duration>,
    /// MQTT's Receive Maximum for this connection.
    pub(super) receive_maximum: u16,
}

/// A rumqttc client and its event loop, with manual acknowledgements and the configured limits.
pub(super) fn client(config: &MqttConfig, session: &Session) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(session.client_id.clone(), config.host.clone(), config.port);
    options
        .set_keep_alive(config.keep_alive.max(Duration::from_secs(5)))
        .set_clean_start(session.clean_start)
        .set_connection_timeout(config.connect_timeout.as_secs().max(1))
        .set_manual_acks(true)
        .set_max_packet_size(Some(u32::try_from(config.packet_limit()).unwrap_or(u32::MAX)))
        .set_session_expiry_interval(
            session.expiry.map(|expiry| u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX)),
        )
        .set_receive_maximum(Some(session.receive_maximum.max(1)));
    // Small packets (PUBACKs, small messages) leave at once instead of waiting for Nagle.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    if let Some((user, password)) = &config.credentials {
        options.set_credentials(user.clone(), password.expose().to_owned());
    }
    if let Some(tls) = &config.tls {
        super::config::install_crypto_provider();
        options.set_transport(rumqttc::Transport::Tls(tls.clone()));
    }
    // Requests wait here for the event loop; when it is full, publishes wait (their callers) and
    // PUBACKs wait in their session's outbox, in order.
    let capacity = usize::from(session.receive_maximum) * 2 + 64;
    AsyncClient::new(options, capacity)
}

/// The pause before the next reconnection attempt: doubles from `min` to `max`.
pub(super) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(config: &MqttConfig) -> Self {
        Backoff { next: config.reconnect_min, min: config.reconnect_min, max: config.reconnect_max }
    }

    pub(super) fn reset(&mut self) {
        self.next = self.min;
    }

    /// Waits the current pause (or until `cancel`); returns `false` when cancelled.
    pub(super) async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            () = tokio::time::sleep(pause) => true,
            () = cancel.cancelled() => false,
        }
    }
}

/// A backend error from rumqttc (the message names MQTT).
pub(super) fn mqtt_error(what: &str, error: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Backend, format!("MQTT: {what}: {error}"))
}

/// Sends DISCONNECT and gives the event loop a moment to write it.
pub(super) async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// One session client id's claim: held by the connection that uses the id, so that no two
/// connections of this process use one id at once (they would take the session from each other).
pub(super) struct Claim {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Set when the holder is closing: the next claimant waits for it instead of taking the next
    /// id, so a group's session is resumed, not left behind.
    closing: AtomicBool,
}

impl Claim {
    /// The holder is closing; a new claimant waits for it.
    pub(super) fn closing(&self) {
        self.closing.store(true, Ordering::Release);
    }
}

static CLAIMS: LazyLock<Mutex<HashMap<String, Arc<Claim>>>> = LazyLock::new(Default::default);

/// The first free client id among `base`, `base-1`, `base-2`, ...: an id whose holder is closing
/// is waited for (its session is this one's to resume).
pub(super) async fn claim(base: &str) -> (String, Arc<Claim>, OwnedMutexGuard<()>) {
    for index in 0u32.. {
        let id = if index == 0 { base.to_owned() } else { format!("{base}-{index}") };
        let claim = CLAIMS
            .lock()
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Claim {
                    lock: Arc::new(tokio::sync::Mutex::new(())),
                    closing: AtomicBool::new(false),
                })
            })
            .clone();
        let guard = match claim.lock.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) if claim.closing.load(Ordering::Acquire) => claim.lock.clone().lock_owned().await,
            Err(_) => continue,
        };
        claim.closing.store(false, Ordering::Release);
        return (id, claim, guard);
    }
    unreachable!("u32 ids run out")
}
