//! The conformance suite against RabbitMQ (127.0.0.1:5672 as guest; override with
//! `MILLSTREAM_AMQP_URL`), including a restart of the local server (`rabbitmqctl stop_app` /
//! `start_app`) in the middle of a run.
//!
//! Every case holds the AMQP tests' lock shared (`support/amqp.rs`); the restart takes it
//! exclusively, so no other test sees the server go away, and starts the server again whatever
//! happens.
#![cfg(all(feature = "conformance", feature = "amqp"))]

use std::sync::Arc;
use std::time::{Duration, Instant};

use millstream::conformance::{BoxFuture, Harness};
use millstream::pubsub::amqp::{lapin, AmqpConfig, AmqpPubSub, Preset};
use millstream::pubsub::PubSub;
use millstream::Error;
use parking_lot::Mutex;

use crate::support::amqp as support;

/// The exchange of the suite's topics.
const EXCHANGE: &str = "msconf";

fn config() -> AmqpConfig {
    // A 4 MiB limit so that the oversized case runs (the server takes up to 128 MiB).
    AmqpConfig::new(support::url())
        .topology(Preset::groups(EXCHANGE))
        .max_payload(4 * 1024 * 1024)
        .connection_name("millstream-conformance")
}

struct AmqpHarness {
    /// The shared lock this case holds while it runs (given up only to restart the server).
    shared: Mutex<Option<std::fs::File>>,
}

impl Harness for AmqpHarness {
    fn name(&self) -> &str {
        "amqp"
    }

    fn connect(&self) -> BoxFuture<'_, millstream::Result<Arc<dyn PubSub>>> {
        Box::pin(async move { Ok(Arc::new(AmqpPubSub::connect(config()).await?) as Arc<dyn PubSub>) })
    }

    fn can_restart(&self) -> bool {
        support::local()
    }

    fn restart_server(&self) -> BoxFuture<'_, millstream::Result<()>> {
        Box::pin(async move {
            drop(self.shared.lock().take());
            let result = tokio::task::spawn_blocking(support::restart_blocking)
                .await
                .map_err(|e| Error::msg(e.to_string()))?;
            *self.shared.lock() = Some(support::shared().await);
            result?;
            // Accepting connections is not enough: wait until a declaration goes through.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let probe = async {
                    let pubsub = AmqpPubSub::connect(config()).await?;
                    let channel =
                        pubsub.connection().await?.create_channel().await.map_err(Error::backend)?;
                    channel
                        .queue_declare(
                            "msconf.restart.probe".into(),
                            lapin::options::QueueDeclareOptions { durable: true, ..Default::default() },
                            Default::default(),
                        )
                        .await
                        .map_err(Error::backend)?;
                    Ok::<_, Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(5), probe).await {
                    Ok(Ok(())) => return Ok(()),
                    _ if Instant::now() > deadline => return Err(Error::msg("RabbitMQ did not come back")),
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
    }

    fn cleanup<'a>(&'a self, topics: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if topics.is_empty() || !support::local() {
                return;
            }
            // conf.<case>.<run>.<n>: every queue of the case's run has `<case>.<run>.` in it.
            let Some(run) = topics[0].rsplit_once('.').map(|(prefix, _)| format!("{prefix}.")) else {
                return;
            };
            let queues = tokio::task::spawn_blocking(move || support::queues_containing(&run))
                .await
                .unwrap_or_default();
            if queues.is_empty() {
                return;
            }
            let Ok(pubsub) = AmqpPubSub::connect(config()).await else { return };
            let Ok(connection) = pubsub.connection().await else { return };
            let Ok(channel) = connection.create_channel().await else { return };
            for queue in queues {
                let _ = channel.queue_delete(queue.as_str().into(), Default::default()).await;
            }
            let _ = millstream::Publisher::close(&pubsub).await;
            let _ = millstream::Subscriber::close(&pubsub).await;
        })
    }
}

async fn harness() -> AmqpHarness {
    crate::support::log();
    AmqpHarness { shared: Mutex::new(Some(support::shared().await)) }
}

millstream::conformance_tests!(harness);
