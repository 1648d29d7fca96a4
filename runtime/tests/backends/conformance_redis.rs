//! The conformance suite against Redis Streams: every case against the shared server
//! (127.0.0.1:6379, or `MILLSTREAM_REDIS_URL`), and the suite's server-restart case against a
//! private `redis-server` with AOF that the test starts, kills and starts again (the shared
//! server is never restarted).
#![cfg(all(feature = "conformance", feature = "redis"))]

use std::sync::Arc;
use std::time::Duration;

use millstream::conformance::{BoxFuture, Harness};
use millstream::pubsub::redis::{RedisConfig, RedisPubSub};
use millstream::pubsub::PubSub;
use parking_lot::Mutex;

use crate::support::redis::{url, PrivateServer};

/// The ack deadline the harness configures (`claim_idle`): short, so that the cases that leave a
/// delivery unsettled run quickly, and far longer than a delivery waits to be handed out on a
/// busy machine (at most `max_in_flight` of them wait), since the backend declares
/// `exactly_once` and the suite then fails on any duplicate.
const DEADLINE: Duration = Duration::from_secs(5);

fn config() -> RedisConfig {
    RedisConfig::default()
        .key_prefix("msconf:")
        .claim_idle(DEADLINE)
        .claim_interval(Duration::from_millis(200))
        .block(Duration::from_millis(500))
        .max_in_flight(64)
        // Small enough that the oversized case allocates little.
        .max_payload(2 * 1024 * 1024)
}

struct RedisHarness {
    url: String,
    /// The private server of the restart case.
    server: Option<Mutex<PrivateServer>>,
}

impl Harness for RedisHarness {
    fn name(&self) -> &str {
        "redis"
    }

    fn connect(&self) -> BoxFuture<'_, millstream::Result<Arc<dyn PubSub>>> {
        Box::pin(
            async move { Ok(Arc::new(RedisPubSub::connect(&self.url, config()).await?) as Arc<dyn PubSub>) },
        )
    }

    fn ack_deadline(&self) -> Option<Duration> {
        Some(DEADLINE)
    }

    fn can_restart(&self) -> bool {
        self.server.is_some()
    }

    fn restart_server(&self) -> BoxFuture<'_, millstream::Result<()>> {
        Box::pin(async move {
            let server = self.server.as_ref().expect("a private server");
            tokio::task::block_in_place(|| server.lock().restart());
            Ok(())
        })
    }

    fn cleanup<'a>(&'a self, topics: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Ok(pubsub) = RedisPubSub::connect(&self.url, config()).await {
                let mut all = topics.to_vec();
                all.extend(topics.iter().map(|t| format!("{t}.dead")));
                if let Err(error) = pubsub.delete_topics(&all).await {
                    eprintln!("cleanup of {topics:?} failed: {error:?}");
                }
            }
        })
    }
}

async fn harness() -> RedisHarness {
    RedisHarness { url: url(), server: None }
}

millstream::conformance_tests!(harness);

/// The suite's own restart case, against a private server with AOF (`appendfsync always`),
/// killed with SIGKILL half-way: every message arrives.
#[test]
fn server_restart_with_aof() {
    let Some(server) = PrivateServer::start("conformance-restart") else { return };
    let harness = RedisHarness { url: server.url(), server: Some(Mutex::new(server)) };
    // The harness owns the server; it is killed and its directory removed when the case ends.
    millstream::conformance::run(
        "server_restart",
        move || async move { harness },
        millstream::conformance::cases::server_restart,
    );
}
