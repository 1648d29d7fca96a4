//! Request–reply: a `Requester` and ordinary handlers answering it.

use std::time::Duration;

use millstream::middleware::PoisonQueue;
use millstream::prelude::*;
use millstream::{ErrorKind, RequestError, Requester, SubscribeOptions};

/// Generous: a reply that must come may take this long on a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

mod prices {
    use super::*;

    #[derive(Serialize, Deserialize)]
    #[millstream::topic("request-test.quote")]
    pub(crate) struct Quote {
        pub(crate) sku: String,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[millstream::topic("request-test.quoted")]
    pub(crate) struct Price {
        pub(crate) sku: String,
        pub(crate) cents: u64,
    }

    #[derive(Serialize, Deserialize)]
    #[millstream::topic("request-test.forget")]
    pub(crate) struct Forget {
        pub(crate) sku: String,
    }

    /// Answers with a price; an unknown sku is a permanent error, a "busy" one a transient one.
    #[millstream::handler(concurrency = 8)]
    pub(crate) async fn quote(query: Quote) -> Result<Price> {
        match query.sku.as_str() {
            "unknown" => Err(Error::permanent("no such sku: unknown")),
            "busy" => Err(Error::msg("the price list is busy")),
            sku => Ok(Price { sku: sku.to_owned(), cents: sku.len() as u64 * 100 }),
        }
    }

    #[derive(Serialize, Deserialize)]
    #[millstream::topic("request-test.who")]
    pub(crate) struct Who;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[millstream::topic("request-test.said")]
    pub(crate) struct Said {
        pub(crate) correlation: Option<String>,
    }

    /// Answers with the correlation id the request carried.
    #[millstream::handler]
    pub(crate) async fn who(_: Who, meta: Metadata) -> Said {
        Said { correlation: meta.get(millstream::keys::CORRELATION_ID).map(str::to_owned) }
    }

    /// Returns nothing: the reply is empty.
    #[millstream::handler]
    pub(crate) async fn forget(_: Forget) {}
}

async fn start(module: &str) -> (MemoryPubSub, Router, Requester) {
    let pubsub = MemoryPubSub::new();
    let router = App::from_registry()
        .module_prefix(module_path!().to_owned() + "::" + module)
        .pubsub(pubsub.clone())
        .start()
        .await
        .unwrap();
    let requester = Requester::connect(pubsub.clone()).await.unwrap();
    (pubsub, router, requester)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_answers_requests_each_with_its_own_reply() {
    use prices::*;
    let (pubsub, router, requester) = start("prices").await;
    let mut published = pubsub.subscribe("request-test.quoted", SubscribeOptions::default()).await.unwrap();
    let asks = (0..50).map(|i| {
        let requester = requester.clone();
        async move {
            let sku = "x".repeat(i + 1);
            let price: Price = requester.request(&Quote { sku: sku.clone() }, WAIT).await.unwrap();
            assert_eq!(price, Price { sku, cents: (i as u64 + 1) * 100 });
        }
    });
    futures_util::future::join_all(asks).await;
    // The replies went to the requester only, not to Price's own topic.
    let nothing = tokio::time::timeout(Duration::from_millis(300), published.next()).await;
    assert!(nothing.is_err(), "a reply is not published to the value's own topic");
    // A handler that returns nothing answers with `()`.
    let () = requester.request(&Forget { sku: "a".into() }, WAIT).await.unwrap();
    // A handle with a correlation id shares the reply topic and gets its replies too.
    let said: Said = requester.correlation_id("flow-9").request(&Who, WAIT).await.unwrap();
    assert_eq!(said, Said { correlation: Some("flow-9".to_owned()) });
    let said: Said = requester.request(&Who, WAIT).await.unwrap();
    assert_eq!(said, Said { correlation: None }, "the original handle carries none");
    requester.close().await.expect("close the requester");
    router.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_travels_back_and_a_missing_handler_times_out() {
    use prices::*;
    let (_pubsub, router, requester) = start("prices").await;
    let error = requester.request::<_, Price>(&Quote { sku: "unknown".into() }, WAIT).await.unwrap_err();
    let RequestError::Remote(remote) = error else { panic!("a remote error: {error}") };
    assert_eq!(remote.kind(), ErrorKind::Handler);
    assert!(remote.is_permanent());
    assert_eq!(remote.message(), "no such sku: unknown");

    // Nothing reads this topic: the request times out.
    let error = requester
        .request_to::<_, Price>("request-test.nobody", &Quote { sku: "a".into() }, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(error, RequestError::Timeout(after) if after == Duration::from_millis(200)), "{error}");
    let as_error: Error = error.into();
    assert_eq!(as_error.kind(), ErrorKind::Timeout);
    requester.close().await.expect("close the requester");
    router.close().await.unwrap();
}

mod guarded {
    use super::*;

    #[derive(Serialize, Deserialize)]
    #[millstream::topic("request-test.guarded")]
    pub(crate) struct Check {
        pub(crate) fail: bool,
    }

    /// A transient failure, taken by the poison queue at once: the error still travels back.
    #[millstream::handler(publish = "request-test.checked", middleware = [PoisonQueue::new("request-test.dead")])]
    pub(crate) async fn check(query: Check) -> Result<Json<bool>> {
        if query.fail {
            return Err(Error::msg("checking failed"));
        }
        Ok(Json(true))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_a_poison_queue_takes_travels_back_too() {
    use guarded::*;
    let (pubsub, router, requester) = start("guarded").await;
    let mut dead = pubsub.subscribe("request-test.dead", SubscribeOptions::default()).await.unwrap();
    let ok: bool = requester.request(&Check { fail: false }, WAIT).await.unwrap();
    assert!(ok);
    let error = requester.request::<_, bool>(&Check { fail: true }, WAIT).await.unwrap_err();
    let RequestError::Remote(remote) = error else { panic!("a remote error: {error}") };
    assert_eq!(remote.message(), "checking failed");
    let poisoned = tokio::time::timeout(WAIT, dead.next()).await.unwrap().unwrap().unwrap();
    assert!(poisoned.message().poison_reason().is_some_and(|r| r.contains("checking failed")));
    requester.close().await.expect("close the requester");
    router.close().await.unwrap();
}
