//! [`RouterConfig`]: the settings a router runs with, fixed when the app is built.

use std::time::Duration;

/// Router settings, given to [`App::config`](crate::App::config).
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

impl RouterConfig {
    /// Sets [`close_timeout`](RouterConfig::close_timeout).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Sets [`poison_topic`](RouterConfig::poison_topic) (`None`: nack permanent failures too).
    pub fn poison_topic(mut self, topic: Option<impl Into<String>>) -> Self {
        self.poison_topic = topic.map(Into::into);
        self
    }

    /// Sets [`nack_delay`](RouterConfig::nack_delay).
    pub fn nack_delay(mut self, delay: Option<Duration>) -> Self {
        self.nack_delay = delay;
        self
    }

    /// Sets [`resubscribe_backoff`](RouterConfig::resubscribe_backoff).
    pub fn resubscribe_backoff(mut self, backoff: Duration) -> Self {
        self.resubscribe_backoff = backoff;
        self
    }
}
