//! The conformance suite against Mosquitto 2. Each case gets a private broker (its own port and
//! persistence directory, `max_queued_messages` raised above the 1000 a session may otherwise
//! hold while offline), so the server-restart case restarts only its own broker; with
//! `MILLSTREAM_MQTT_URL` set, every case runs against that broker instead and the restart case
//! is skipped.
#![cfg(all(feature = "conformance", feature = "mqtt"))]

use std::sync::Arc;
use std::time::Duration;

use millstream::conformance::{BoxFuture, Harness};
use millstream::pubsub::mqtt::{MqttConfig, MqttPubSub};
use millstream::pubsub::PubSub;

use crate::support::mqtt::{unique, Broker};

struct MqttHarness {
    broker: Option<Arc<Broker>>,
    /// One instance name for every connection of the case: a group's session is resumed by the
    /// next connection that subscribes to it (as a restarted replica would).
    instance: String,
}

impl MqttHarness {
    fn config(&self) -> millstream::Result<MqttConfig> {
        let url = match &self.broker {
            Some(broker) => broker.url(),
            None => std::env::var("MILLSTREAM_MQTT_URL").expect("checked in harness()"),
        };
        Ok(MqttConfig::from_url(&url, self.instance.clone())?
            .reconnect(Duration::from_millis(50), Duration::from_millis(500)))
    }
}

impl Harness for MqttHarness {
    fn name(&self) -> &str {
        "mqtt"
    }

    fn connect(&self) -> BoxFuture<'_, millstream::Result<Arc<dyn PubSub>>> {
        Box::pin(async move { Ok(Arc::new(MqttPubSub::connect(self.config()?).await?) as Arc<dyn PubSub>) })
    }

    fn can_restart(&self) -> bool {
        self.broker.is_some()
    }

    fn restart_server(&self) -> BoxFuture<'_, millstream::Result<()>> {
        Box::pin(async move {
            let broker = self.broker.clone().expect("can_restart");
            tokio::task::spawn_blocking(move || {
                let shared = broker.shared_subscriptions().unwrap_or(0);
                broker.restart();
                // Mosquitto 2.0.11 restores sessions but not their shared subscriptions: until
                // the members have subscribed again, a publish reaches no one and is dropped.
                // Wait for them, as an operator restarting the broker would have to.
                if broker.wait_shared_subscriptions(shared, Duration::from_secs(30)) {
                    Ok(())
                } else {
                    Err(millstream::Error::msg("the group members did not subscribe again"))
                }
            })
            .await
            .map_err(|e| millstream::Error::msg(e.to_string()))?
        })
    }
}

async fn harness() -> MqttHarness {
    let broker = match std::env::var("MILLSTREAM_MQTT_URL") {
        Ok(_) => None,
        Err(_) => Some(Arc::new(Broker::start("max_queued_messages 100000"))),
    };
    MqttHarness { broker, instance: unique("conf") }
}

millstream::conformance_tests!(harness);
