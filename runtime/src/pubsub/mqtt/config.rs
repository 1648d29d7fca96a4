//! [`MqttConfig`] and the per-call options: [`Qos`], [`MqttPublish`] (retained, QoS) and
//! [`MqttSubscribe`] (a subscription's QoS and retained handling).

use std::fmt;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// An MQTT quality of service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Qos {
    /// QoS 0: at most once; nothing is acknowledged, nothing is redelivered.
    AtMostOnce,
    /// QoS 1: at least once (the default).
    #[default]
    AtLeastOnce,
    /// QoS 2: exactly once between two hops (publishing only; see [`MqttSubscribe::qos`]).
    ExactlyOnce,
}

impl Qos {
    pub(super) fn raw(self) -> rumqttc::v5::mqttbytes::QoS {
        match self {
            Qos::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            Qos::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            Qos::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
        }
    }
}

/// How one message is published ([`MqttPubSub::publish_with`](super::MqttPubSub::publish_with)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MqttPublish {
    /// The QoS; `None`: [`MqttConfig::qos`].
    pub qos: Option<Qos>,
    /// Ask the broker to keep the message as the topic's retained message, handed to every later
    /// subscriber (delivered with [`DeliveryInfo::retained`](crate::DeliveryInfo::retained) set).
    pub retain: bool,
}

impl MqttPublish {
    /// The defaults: the configured QoS, not retained.
    pub fn new() -> Self {
        MqttPublish { qos: None, retain: false }
    }

    /// A retained publish.
    pub fn retained() -> Self {
        MqttPublish { qos: None, retain: true }
    }

    /// With this QoS.
    pub fn qos(mut self, qos: Qos) -> Self {
        self.qos = Some(qos);
        self
    }

    /// Retained or not.
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }
}

impl Default for MqttPublish {
    fn default() -> Self {
        Self::new()
    }
}

/// MQTT options of one subscription, given as a
/// [`SubscribeOptions::extension`](crate::SubscribeOptions::extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MqttSubscribe {
    /// The largest QoS the broker delivers with: [`Qos::AtLeastOnce`] (default) or
    /// [`Qos::AtMostOnce`] (no acknowledgement, no redelivery). [`Qos::ExactlyOnce`] is refused:
    /// rumqttc forgets its QoS 2 receive state when it reconnects, and the broker's repeated
    /// PUBREL would then break every new connection.
    pub qos: Qos,
    /// Whether a subscription without a group receives the topic's retained messages when it
    /// subscribes (default `true`). MQTT never sends retained messages to shared subscriptions.
    pub retained: bool,
}

impl MqttSubscribe {
    /// The defaults: QoS 1, retained messages delivered.
    pub fn new() -> Self {
        MqttSubscribe { qos: Qos::AtLeastOnce, retained: true }
    }

    /// With this QoS.
    pub fn qos(mut self, qos: Qos) -> Self {
        self.qos = qos;
        self
    }

    /// Whether to receive retained messages on subscribing.
    pub fn retained(mut self, retained: bool) -> Self {
        self.retained = retained;
        self
    }
}

impl Default for MqttSubscribe {
    fn default() -> Self {
        Self::new()
    }
}

/// A password, never printed (`Debug` shows `"***"`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Settings of an [`MqttPubSub`](super::MqttPubSub).
///
/// `Debug` redacts the password and the TLS keys.
#[derive(Clone)]
#[non_exhaustive]
pub struct MqttConfig {
    /// The broker's host name or address. Default `127.0.0.1`.
    pub host: String,
    /// The broker's port. Default 1883 (8883 with TLS from [`MqttConfig::from_url`]).
    pub port: u16,
    /// This process's name among the replicas of a service: the consumer groups' client ids are
    /// made from it, so it must be **stable** across restarts (a pod name, a host name) for a
    /// replica to get its session (and its unacknowledged messages) back, and **distinct** between
    /// replicas that run at the same time (two connections with one client id take the session
    /// from each other). Letters, digits, `-`, `_` and `.`.
    pub instance: String,
    /// The QoS of publishes. Default [`Qos::AtLeastOnce`].
    pub qos: Qos,
    /// The largest payload a publish accepts, in bytes; the packet limit given to rumqttc (and
    /// announced to the broker) is this plus 64 KiB for the topic and properties. Default 1 MiB
    /// (rumqttc's own default packet limit is 10 KiB).
    pub max_payload: usize,
    /// How long the broker keeps a consumer group's session (its subscription and its queued
    /// messages) after the member disconnects. Default one day.
    pub session_expiry: Duration,
    /// How many deliveries the broker sends one session before it waits for PUBACKs (MQTT's
    /// Receive Maximum). Default 100; [`SubscribeOptions::max_in_flight`](crate::SubscribeOptions::max_in_flight)
    /// overrides it for the session it opens.
    pub receive_maximum: u16,
    /// The keep-alive interval. Default 30 s.
    pub keep_alive: Duration,
    /// How long one connection attempt (TCP, TLS, CONNECT/CONNACK) may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How long a publish waits for the broker's acknowledgement (while reconnecting, too)
    /// before it fails; for a batch, for all of its acknowledgements. Default 30 s.
    pub publish_timeout: Duration,
    /// The first pause before reconnecting; it doubles on each failure up to
    /// [`MqttConfig::reconnect_max`]. Default 100 ms.
    pub reconnect_min: Duration,
    /// The longest pause between reconnection attempts. Default 5 s.
    pub reconnect_max: Duration,
    /// Username and password, if the broker wants them.
    pub credentials: Option<(String, Secret)>,
    /// TLS, if the broker wants it (rustls with the ring provider).
    pub tls: Option<rumqttc::TlsConfiguration>,
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("instance", &self.instance)
            .field("qos", &self.qos)
            .field("max_payload", &self.max_payload)
            .field("session_expiry", &self.session_expiry)
            .field("receive_maximum", &self.receive_maximum)
            .field("keep_alive", &self.keep_alive)
            .field("username", &self.credentials.as_ref().map(|(user, _)| user))
            .field("password", &self.credentials.as_ref().map(|(_, password)| password))
            .field("tls", &self.tls.as_ref().map(|_| "configured"))
            .finish_non_exhaustive()
    }
}

impl MqttConfig {
    /// Defaults for the broker at 127.0.0.1:1883, for the replica named `instance` (see
    /// [`MqttConfig::instance`]).
    pub fn new(instance: impl Into<String>) -> Self {
        MqttConfig {
            host: "127.0.0.1".to_owned(),
            port: 1883,
            instance: instance.into(),
            qos: Qos::AtLeastOnce,
            max_payload: 1024 * 1024,
            session_expiry: Duration::from_secs(24 * 3600),
            receive_maximum: 100,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            credentials: None,
            tls: None,
        }
    }

    /// Settings from a URL: `mqtt://[user[:password]@]host[:port]` (or `tcp://`), or `mqtts://`
    /// (or `ssl://`) for TLS with the system's root certificates. User and password are
    /// percent-decoded.
    pub fn from_url(url: &str, instance: impl Into<String>) -> Result<Self> {
        let bad = |why: &str| Error::new(ErrorKind::Config, format!("MQTT URL: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme (mqtt:// or mqtts://)"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(bad("the scheme is not mqtt, tcp, mqtts or ssl")),
        };
        let rest = rest.split(['/', '?']).next().unwrap_or_default();
        let (login, address) = match rest.rsplit_once('@') {
            Some((login, address)) => (Some(login), address),
            None => (None, rest),
        };
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || address.starts_with('[') => {
                (host, port.parse::<u16>().map_err(|_| bad("the port is not a number"))?)
            }
            _ => (address, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let mut config = MqttConfig::new(instance).host(host.trim_matches(['[', ']']), port);
        if let Some(login) = login {
            let (user, password) = login.split_once(':').unwrap_or((login, ""));
            config = config.credentials(percent_decode(user), percent_decode(password));
        }
        if tls {
            // rumqttc's default loads the system's root certificates and panics when it cannot.
            install_crypto_provider();
            let roots = std::panic::catch_unwind(rumqttc::TlsConfiguration::default)
                .map_err(|_| bad("the system's root certificates could not be loaded"))?;
            config.tls = Some(roots);
        }
        Ok(config)
    }

    /// Sets the broker's host and port.
    pub fn host(mut self, host: impl Into<String>, port: u16) -> Self {
        self.host = host.into();
        self.port = port;
        self
    }

    /// Sets [`MqttConfig::qos`].
    pub fn qos(mut self, qos: Qos) -> Self {
        self.qos = qos;
        self
    }

    /// Sets [`MqttConfig::max_payload`] (at most 256 MiB less the room for properties).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes.min(MAX_PACKET - PROPERTY_ROOM);
        self
    }

    /// Sets [`MqttConfig::session_expiry`].
    pub fn session_expiry(mut self, expiry: Duration) -> Self {
        self.session_expiry = expiry;
        self
    }

    /// Sets [`MqttConfig::receive_maximum`].
    pub fn receive_maximum(mut self, max: u16) -> Self {
        self.receive_maximum = max.max(1);
        self
    }

    /// Sets [`MqttConfig::keep_alive`].
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// Sets [`MqttConfig::publish_timeout`].
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets the reconnection backoff ([`MqttConfig::reconnect_min`], [`MqttConfig::reconnect_max`]).
    pub fn reconnect(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// Sets [`MqttConfig::credentials`].
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((username.into(), Secret::new(password)));
        self
    }

    /// Sets [`MqttConfig::tls`]: `rumqttc::TlsConfiguration::Simple { ca, alpn, client_auth }`
    /// with PEM bytes, or `Rustls(Arc<ClientConfig>)` for full control.
    pub fn tls(mut self, tls: rumqttc::TlsConfiguration) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The packet limit: the payload limit and room for the topic and properties.
    pub(super) fn packet_limit(&self) -> usize {
        self.max_payload + PROPERTY_ROOM
    }

    pub(super) fn check(&self) -> Result<()> {
        let valid = !self.instance.is_empty()
            && self.instance.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(Error::new(
                ErrorKind::Config,
                format!("MqttConfig::instance {:?}: use letters, digits, '-', '_' and '.'", self.instance),
            ));
        }
        Ok(())
    }
}

/// MQTT's largest packet (the remaining length's limit).
const MAX_PACKET: usize = 268_435_455;
/// Room for the topic and properties on top of the payload limit.
pub(super) const PROPERTY_ROOM: usize = 64 * 1024;

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(byte) = text.get(i + 1..i + 3).and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes rustls's ring provider the process's default, unless one is installed already: rumqttc
/// builds its TLS configuration with the process default, and with more than one provider
/// compiled in (ring and aws-lc-rs) rustls cannot choose by itself.
pub(super) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_debug_redacts_the_password() {
        let config = MqttConfig::from_url("mqtt://ann:s%40cret@broker.local:1884", "a").unwrap();
        assert_eq!((config.host.as_str(), config.port), ("broker.local", 1884));
        let (user, password) = config.credentials.clone().unwrap();
        assert_eq!((user.as_str(), password.expose()), ("ann", "s@cret"));
        let printed = format!("{config:?}");
        assert!(printed.contains("ann") && !printed.contains("cret"), "{printed}");
        let tls = MqttConfig::from_url("mqtts://broker.local", "a").unwrap();
        assert_eq!(tls.port, 8883);
        assert!(tls.tls.is_some());
        assert!(format!("{tls:?}").contains("configured"));
        assert!(MqttConfig::from_url("http://x", "a").is_err());
        assert!(MqttConfig::from_url("mqtt://x:port", "a").is_err());
        assert!(MqttConfig::new("has space").check().is_err());
    }
}
