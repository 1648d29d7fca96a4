//! MQTT beyond the conformance suite: PUBACK order, a session resumed after a disconnect, a
//! shared-subscription member that dies mid-stream, retained messages, wildcards, QoS 0 and 2,
//! username and password. Against the machine's Mosquitto (`MILLSTREAM_MQTT_URL`, default
//! 127.0.0.1:1883), or a private one where a test needs settings of its own (a log of every
//! packet, a password file).
#![cfg(feature = "mqtt")]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use millstream::pubsub::mqtt::{MqttConfig, MqttPubSub, MqttPublish, MqttSubscribe, Qos};
use millstream::{Delivery, ErrorKind, Message, Publisher, SubscribeOptions, Subscriber, Subscription};

use crate::support::mqtt::{shared_url, unique, Broker};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn connect(url: &str, instance: &str) -> MqttPubSub {
    let config = MqttConfig::from_url(url, instance)
        .expect("url")
        .reconnect(Duration::from_millis(50), Duration::from_millis(500));
    MqttPubSub::connect(config).await.expect("connect")
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(TIMEOUT, sub.next()).await.expect("a delivery in time").expect("open").expect("ok")
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(delivery.message().payload()).into_owned()
}

async fn close(pubsub: &MqttPubSub) {
    Publisher::close(pubsub).await.unwrap();
    Subscriber::close(pubsub).await.unwrap();
}

/// Waits (polling, with a deadline) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The packet ids of the PUBLISHes the broker sent `client`, and of the PUBACKs it received from
/// it, each in log order (a broker with `log_type all`).
fn publishes_and_pubacks(log: &str, client: &str) -> (Vec<u32>, Vec<u32>) {
    let mut sent = Vec::new();
    let mut acked = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split_once(&format!("Sending PUBLISH to {client} (")).map(|(_, r)| r) {
            let mid = rest.split(", ").find_map(|field| field.strip_prefix('m')?.parse::<u32>().ok());
            sent.extend(mid);
        } else if let Some(rest) =
            line.split_once(&format!("Received PUBACK from {client} (Mid: ")).map(|(_, r)| r)
        {
            acked.extend(rest.split(',').next().and_then(|mid| mid.parse::<u32>().ok()));
        }
    }
    (sent, acked)
}

/// Handlers settle in any order (here: reversed, in batches); the PUBACKs reach the broker in the
/// order the messages arrived, and none before the ack of every earlier delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubacks_leave_in_arrival_order() {
    let broker = Broker::start("log_type all\nmax_inflight_messages 100");
    let instance = unique("order");
    let ps = connect(&broker.url(), &instance).await;
    let topic = unique("order/t");
    let group = "g";
    let mut sub = ps.subscribe(&topic, SubscribeOptions::group(group)).await.unwrap();
    let n = 40;
    ps.publish_batch(&topic, (0..n).map(|i| Message::new(format!("m{i}"))).collect()).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(next(&mut sub).await);
    }
    // The last ten first, newest first: nothing may be acknowledged to the broker yet.
    for delivery in held.drain(30..).rev() {
        delivery.ack().await.unwrap();
    }
    // Then the rest, from the newest down to the first: once the first is acked, all go.
    for delivery in held.drain(..).rev() {
        delivery.ack().await.unwrap();
    }
    let client = format!("ms-{instance}-{group}-");
    let read = || {
        let log = broker.log();
        let id = log
            .lines()
            .find_map(|line| line.split_once("Sending PUBLISH to ").map(|(_, r)| r))
            .filter(|r| r.starts_with(&client))
            .and_then(|r| r.split(' ').next())
            .map(str::to_owned)
            .unwrap_or_default();
        publishes_and_pubacks(&log, &id)
    };
    eventually("every PUBACK in the broker's log", || read().1.len() >= n).await;
    let (sent, acked) = read();
    assert_eq!(sent.len(), n, "{sent:?}");
    assert_eq!(acked, sent, "PUBACKs in the order the PUBLISHes arrived");
    close(&ps).await;
}

/// A consumer takes five messages, acks the first two, and its process goes away with three
/// unsettled; the next process with the same instance resumes the session and gets exactly
/// those three back, marked as redeliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_redelivers_what_was_not_acked() {
    let url = shared_url();
    let instance = unique("resume");
    let topic = unique("resume/t");
    let options = SubscribeOptions::group("workers");
    {
        let ps = connect(&url, &instance).await;
        let mut sub = ps.subscribe(&topic, options.clone()).await.unwrap();
        ps.publish_batch(&topic, (0..5).map(|i| Message::new(format!("m{i}"))).collect()).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(next(&mut sub).await);
        }
        let rest = held.split_off(2);
        for delivery in held {
            assert!(text(&delivery) == "m0" || text(&delivery) == "m1");
            delivery.ack().await.unwrap();
        }
        for delivery in rest {
            let (_, attempt, acker) = delivery.into_parts();
            assert_eq!(attempt, 1);
            std::mem::forget(acker); // as a crash leaves it
        }
        drop(sub);
        close(&ps).await;
    }
    let ps = connect(&url, &instance).await;
    let mut sub = ps.subscribe(&topic, options).await.unwrap();
    let mut again = BTreeSet::new();
    for _ in 0..3 {
        let delivery = next(&mut sub).await;
        assert!(delivery.attempt() >= 2, "a redelivery says so: {}", delivery.attempt());
        again.insert(text(&delivery));
        delivery.ack().await.unwrap();
    }
    assert_eq!(again, BTreeSet::from(["m2".to_owned(), "m3".to_owned(), "m4".to_owned()]));
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), sub.next()).await.is_err(),
        "the acked messages do not come back"
    );
    close(&ps).await;
}

/// Two replicas share a group. One dies in the middle of the stream (its unsettled deliveries
/// and the messages the broker keeps queuing for it wait in its session); the other goes on.
/// When a process with the dead one's instance comes back, every message has been handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_member_that_dies_loses_nothing() {
    let broker = Broker::start("max_queued_messages 100000");
    let url = broker.url();
    let topic = unique("shared/t");
    let (one, two) = (unique("one"), unique("two"));
    let options = SubscribeOptions::group("pool");
    let n = 300;
    let handled = std::sync::Arc::new(parking_lot::Mutex::new(BTreeSet::new()));

    let survivor = connect(&url, &two).await;
    let mut survivor_sub = survivor.subscribe(&topic, options.clone()).await.unwrap();
    let survivor_task = {
        let handled = handled.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = survivor_sub.next().await {
                handled.lock().insert(text(&delivery));
                let _ = delivery.ack().await;
            }
        })
    };

    let dying = connect(&url, &one).await;
    let mut dying_sub = dying.subscribe(&topic, options.clone()).await.unwrap();
    let publisher = connect(&url, &unique("pub")).await;
    let publishing = {
        let topic = topic.clone();
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for i in 0..n {
                publisher.publish(&topic, Message::new(format!("m{i}"))).await.unwrap();
            }
        })
    };
    // The dying member handles ten, takes five more, and dies without settling them.
    for i in 0..15 {
        let delivery = next(&mut dying_sub).await;
        if i < 10 {
            handled.lock().insert(text(&delivery));
            delivery.ack().await.unwrap();
        } else {
            let (_, _, acker) = delivery.into_parts();
            std::mem::forget(acker);
        }
    }
    drop(dying_sub);
    close(&dying).await;
    publishing.await.unwrap();
    // The survivor got its share; the dead member's share waits in its session.
    let handled_now = handled.lock().len();
    assert!(handled_now < n, "Mosquitto queues for the offline member: {handled_now} of {n} handled");

    let back = connect(&url, &one).await;
    let mut back_sub = back.subscribe(&topic, options).await.unwrap();
    let back_task = {
        let handled = handled.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = back_sub.next().await {
                handled.lock().insert(text(&delivery));
                let _ = delivery.ack().await;
            }
        })
    };
    eventually("every message handled by one member or the other", || handled.lock().len() == n).await;
    close(&back).await;
    close(&survivor).await;
    close(&publisher).await;
    let _ = tokio::time::timeout(TIMEOUT, back_task).await;
    let _ = tokio::time::timeout(TIMEOUT, survivor_task).await;
}

/// A retained message reaches a subscriber that comes later, flagged as retained; a live one is
/// not; clearing it leaves nothing for the next subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_reach_late_subscribers() {
    let ps = connect(&shared_url(), &unique("retain")).await;
    let topic = unique("retain/t");
    let sent = Message::new("last known value").with_header("unit", "°C");
    ps.publish_with(&topic, sent.clone(), MqttPublish::retained()).await.unwrap();
    let mut sub = ps.subscribe(&topic, SubscribeOptions::default()).await.unwrap();
    let delivery = next(&mut sub).await;
    assert_eq!(delivery.message(), &sent, "id, metadata and payload");
    let info = delivery.info().expect("delivery info");
    assert!(info.retained, "flagged as retained");
    assert_eq!(info.topic.as_deref(), Some(topic.as_str()));
    delivery.ack().await.unwrap();
    ps.publish(&topic, Message::new("live")).await.unwrap();
    let live = next(&mut sub).await;
    assert_eq!(text(&live), "live");
    assert!(!live.info().is_some_and(|info| info.retained), "a live message is not retained");
    live.ack().await.unwrap();
    // Opting out of retained messages, and clearing them.
    let mut without = ps
        .subscribe(&topic, SubscribeOptions::default().extension(MqttSubscribe::new().retained(false)))
        .await
        .unwrap();
    ps.clear_retained(&topic).await.unwrap();
    let mut late = ps.subscribe(&topic, SubscribeOptions::default()).await.unwrap();
    ps.publish(&topic, Message::new("after")).await.unwrap();
    // MQTT forwards the clearing (empty) publish to the subscribers there are.
    assert_eq!(
        text(&next(&mut without).await),
        "",
        "no retained message when opted out: the clear comes first"
    );
    assert_eq!(text(&next(&mut without).await), "after");
    assert_eq!(text(&next(&mut late).await), "after", "a cleared retained message is gone");
    close(&ps).await;
}

/// `+` and `#` patterns, alone and in a group: the concrete topic comes with each delivery; a
/// wildcard without `pattern()` is refused, as is publishing to one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscriptions_name_the_concrete_topic() {
    let ps = connect(&shared_url(), &unique("wild")).await;
    let base = unique("wild");
    let mut plus =
        ps.subscribe(&format!("{base}/+/temp"), SubscribeOptions::default().pattern()).await.unwrap();
    let mut hash =
        ps.subscribe(&format!("{base}/#"), SubscribeOptions::group("all").pattern()).await.unwrap();
    let topics = [format!("{base}/a/temp"), format!("{base}/b/humidity"), format!("{base}/b/temp")];
    for topic in &topics {
        ps.publish(topic, Message::new(topic.clone())).await.unwrap();
    }
    for expected in [&topics[0], &topics[2]] {
        let delivery = next(&mut plus).await;
        assert_eq!(&text(&delivery), expected);
        assert_eq!(delivery.info().and_then(|i| i.topic.as_deref()), Some(expected.as_str()));
        delivery.ack().await.unwrap();
    }
    for expected in &topics {
        let delivery = next(&mut hash).await;
        assert_eq!(delivery.info().and_then(|i| i.topic.as_deref()), Some(expected.as_str()));
        delivery.ack().await.unwrap();
    }
    for bad in [format!("{base}/+/temp"), format!("{base}/#")] {
        let error = ps.subscribe(&bad, SubscribeOptions::default()).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config, "{bad}: a wildcard needs pattern()");
        let error = ps.publish(&bad, Message::new("x")).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config, "{bad}: not a topic name");
    }
    let error = ps.subscribe(&format!("{base}/a#"), SubscribeOptions::default().pattern()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config, "'#' must be a whole level");
    close(&ps).await;
}

/// QoS 0 and QoS 2 publishes arrive; a QoS 0 subscription gets its messages without PUBACKs; a
/// QoS 2 subscription is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_options() {
    let ps = connect(&shared_url(), &unique("qos")).await;
    let topic = unique("qos/t");
    let mut sub = ps.subscribe(&topic, SubscribeOptions::group("g")).await.unwrap();
    let mut at_most_once = ps
        .subscribe(&topic, SubscribeOptions::default().extension(MqttSubscribe::new().qos(Qos::AtMostOnce)))
        .await
        .unwrap();
    ps.publish_with(&topic, Message::new("q0"), MqttPublish::new().qos(Qos::AtMostOnce)).await.unwrap();
    ps.publish_with(&topic, Message::new("q2"), MqttPublish::new().qos(Qos::ExactlyOnce)).await.unwrap();
    let mut got = BTreeSet::new();
    for _ in 0..2 {
        let delivery = next(&mut sub).await;
        got.insert(text(&delivery));
        delivery.ack().await.unwrap();
    }
    assert_eq!(got, BTreeSet::from(["q0".to_owned(), "q2".to_owned()]));
    for _ in 0..2 {
        next(&mut at_most_once).await.ack().await.unwrap();
    }
    let error = ps
        .subscribe(&topic, SubscribeOptions::default().extension(MqttSubscribe::new().qos(Qos::ExactlyOnce)))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    close(&ps).await;
}

/// A broker that wants a password: the right one connects, a wrong one is refused at connect,
/// and neither shows up in `Debug`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_and_password() {
    let dir = std::env::temp_dir().join(unique("mqtt-passwd"));
    std::fs::create_dir_all(&dir).unwrap();
    let passwords = dir.join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&passwords)
        .args(["ann", "s3cret/pw"])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    let broker = Broker::start(&format!("allow_anonymous false\npassword_file {}", passwords.display()));
    let config = |password: &str| {
        MqttConfig::new(unique("auth")).host("127.0.0.1", broker.port()).credentials("ann", password)
    };
    let good = config("s3cret/pw");
    assert!(!format!("{good:?}").contains("s3cret"), "the password is redacted");
    let ps = MqttPubSub::connect(good).await.expect("the right password connects");
    assert!(!format!("{ps:?}").contains("s3cret"));
    let topic = unique("auth/t");
    let mut sub = ps.subscribe(&topic, SubscribeOptions::group("g")).await.unwrap();
    ps.publish(&topic, Message::new("hello")).await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "hello");
    close(&ps).await;
    let error = MqttPubSub::connect(config("wrong")).await.expect_err("a wrong password is refused");
    assert!(!error.to_string().contains("wrong"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The broker streams faster than rumqttc writes PUBACKs (its event loop reads the network and
/// its request channel in turn): acks wait in order in the session's outbox instead of failing
/// on a full channel. (Found by the suite's full mode: 1000 messages, each acked in turn.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_never_fail_on_a_busy_connection() {
    let broker = Broker::start("max_queued_messages 100000");
    let ps = connect(&broker.url(), &unique("busy")).await;
    let topic = unique("busy/t");
    let mut sub = ps.subscribe(&topic, SubscribeOptions::group("g")).await.unwrap();
    let n = 3000;
    ps.publish_batch(&topic, (0..n).map(|i| Message::new(format!("m{i}"))).collect()).await.unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < n {
        let delivery = next(&mut sub).await;
        seen.insert(text(&delivery));
        delivery.ack().await.expect("an ack is accepted however busy the connection");
    }
    close(&ps).await;
}

/// Publishers that share one connection and overfill its request queue (a few hundred
/// requests): every publish returns once the broker has the message, each publisher's messages
/// arrive in the order it sent them, and none is lost or sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_overfilling_the_queue_lose_nothing() {
    let broker = Broker::start("max_queued_messages 100000");
    let ps = std::sync::Arc::new(connect(&broker.url(), &unique("crowd")).await);
    let topic = unique("crowd/t");
    let mut sub = ps.subscribe(&topic, SubscribeOptions::default()).await.unwrap();
    let (publishers, batches, batch) = (4, 3, 700);
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..publishers {
        let (ps, topic) = (ps.clone(), topic.clone());
        tasks.spawn(async move {
            for b in 0..batches {
                let messages = (0..batch).map(|i| Message::new(format!("{p}:{}", b * batch + i))).collect();
                ps.publish_batch(&topic, messages).await.expect("a batch");
                ps.publish(&topic, Message::new(format!("{p}:single{b}"))).await.expect("a single publish");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let total = publishers * batches * (batch + 1);
    let mut last = vec![None::<usize>; publishers];
    let mut singles = 0;
    for _ in 0..total {
        let delivery = next(&mut sub).await;
        let body = text(&delivery);
        let (p, n) = body.split_once(':').unwrap();
        let p: usize = p.parse().unwrap();
        if n.starts_with("single") {
            singles += 1;
        } else {
            let n: usize = n.parse().unwrap();
            assert!(last[p].is_none_or(|last| n == last + 1), "publisher {p}: {n} after {:?}", last[p]);
            last[p] = Some(n);
        }
        delivery.ack().await.unwrap();
    }
    assert_eq!(singles, publishers * batches);
    assert!(last.iter().all(|last| *last == Some(batches * batch - 1)), "{last:?}");
    close(&ps).await;
}

/// A TLS listener with a certificate from a test CA: trusting that CA connects (and messages
/// flow); trusting another CA is refused at connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let dir = std::env::temp_dir().join(unique("mqtt-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    for ca in ["ca", "other-ca"] {
        let key = format!("{ca}.key");
        let pem = format!("{ca}.pem");
        let subject = format!("/CN={ca}");
        openssl(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem, "-subj",
            &subject, "-days", "1",
        ]);
    }
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    let path = |file: &str| dir.join(file).display().to_string();
    let broker = Broker::start(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}",
        path("ca.pem"),
        path("server.pem"),
        path("server.key")
    ));
    let config = |ca: &str| {
        let ca = std::fs::read(dir.join(ca)).unwrap();
        MqttConfig::new(unique("tls"))
            .host("127.0.0.1", broker.port())
            .tls(millstream::pubsub::mqtt::TlsConfiguration::Simple { ca, alpn: None, client_auth: None })
    };
    let ps = MqttPubSub::connect(config("ca.pem")).await.expect("TLS with the right CA");
    let topic = unique("tls/t");
    let mut sub = ps.subscribe(&topic, SubscribeOptions::group("g")).await.unwrap();
    ps.publish(&topic, Message::new("over tls")).await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "over tls");
    close(&ps).await;
    let error = MqttPubSub::connect(config("other-ca.pem")).await.expect_err("a certificate from another CA");
    eprintln!("refused as expected: {error}");
    let plain = MqttConfig::new(unique("plain")).host("127.0.0.1", broker.port());
    assert!(MqttPubSub::connect(plain).await.is_err(), "no TLS to a TLS listener");
    let _ = std::fs::remove_dir_all(&dir);
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
struct Order {
    id: u64,
    qty: u32,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
struct Invoice {
    order: u64,
    cents: u64,
}
impl millstream::Publishable for Invoice {}

static BILLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn bill(order: Order) -> millstream::Result<Invoice> {
    BILLED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Ok(Invoice { order: order.id, cents: u64::from(order.qty) * 100 })
}

/// The router on MQTT, four lanes acking out of order: every output is published, an
/// undecodable input goes to the poison topic and is acknowledged (MQTT has no dead letter), and
/// a router started again on the same instance resumes the group's session with nothing left
/// over: the next order is the only one handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_on_mqtt_publishes_outputs_and_poisons_what_cannot_be_read() {
    use millstream::router::{poison_keys, RouterConfig};
    use millstream::{App, Route};
    use std::sync::atomic::Ordering;

    let url = shared_url();
    let instance = unique("router");
    let base = unique("router");
    let (input, output, poison) =
        (format!("{base}/orders"), format!("{base}/invoices"), format!("{base}/poison"));
    let checker = connect(&url, &unique("checker")).await;
    let mut invoices = checker.subscribe(&output, SubscribeOptions::group("check")).await.unwrap();
    let mut poisoned = checker.subscribe(&poison, SubscribeOptions::group("check")).await.unwrap();
    let start = |pubsub: MqttPubSub| {
        let mut config = RouterConfig::default();
        config.poison_topic = Some(poison.clone());
        let router = App::new()
            .pubsub(pubsub)
            .config(config)
            .route(Route::new("bill", &input, bill).publish(&output).concurrency(4))
            .build()
            .unwrap();
        let run = tokio::spawn({
            let router = router.clone();
            async move { router.run().await }
        });
        (router, run)
    };
    let order = |id: u64| Message::new(serde_json::to_vec(&Order { id, qty: 2 }).unwrap());

    let (router, run) = start(connect(&url, &instance).await);
    tokio::time::timeout(TIMEOUT, router.running()).await.expect("router running");
    let bad = Message::new(r#"{"id":"seven"}"#);
    let bad_id = bad.id();
    for id in 0..50 {
        checker.publish(&input, order(id)).await.unwrap();
        if id == 25 {
            checker.publish(&input, bad.clone()).await.unwrap();
        }
    }
    let mut billed = BTreeSet::new();
    while billed.len() < 50 {
        let delivery = next(&mut invoices).await;
        let invoice: Invoice = serde_json::from_slice(delivery.message().payload()).unwrap();
        billed.insert(invoice.order);
        delivery.ack().await.unwrap();
    }
    let delivery = next(&mut poisoned).await;
    assert_eq!(delivery.message().id(), bad_id);
    assert_eq!(delivery.message().metadata().get(poison_keys::KIND), Some("Decode"));
    delivery.ack().await.unwrap();
    router.shutdown();
    tokio::time::timeout(TIMEOUT, run).await.expect("router stops").unwrap().unwrap();
    assert_eq!(BILLED.load(Ordering::SeqCst), 50);

    let (router, run) = start(connect(&url, &instance).await);
    tokio::time::timeout(TIMEOUT, router.running()).await.expect("router running again");
    checker.publish(&input, order(50)).await.unwrap();
    let delivery = next(&mut invoices).await;
    let invoice: Invoice = serde_json::from_slice(delivery.message().payload()).unwrap();
    assert_eq!(invoice.order, 50, "nothing of the first run came back before it");
    delivery.ack().await.unwrap();
    assert_eq!(BILLED.load(Ordering::SeqCst), 51);
    router.shutdown();
    tokio::time::timeout(TIMEOUT, run).await.expect("router stops").unwrap().unwrap();
    close(&checker).await;
}

/// What `docs/backends.md` warns about: Mosquitto keeps at most `max_queued_messages` for an
/// offline session and drops the rest (here 10 of 30), so a consumer that may be away long needs
/// the broker configured for it (the suite's brokers raise it to 100 000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_drops_what_an_offline_session_cannot_queue() {
    let broker = Broker::start("max_queued_messages 10");
    let instance = unique("queue");
    let topic = unique("queue/t");
    let options = SubscribeOptions::group("g");
    let consumer = connect(&broker.url(), &instance).await;
    drop(consumer.subscribe(&topic, options.clone()).await.unwrap());
    close(&consumer).await;
    let publisher = connect(&broker.url(), &unique("pub")).await;
    // Publishes succeed: the broker accepts them and drops what does not fit the queue.
    for i in 0..30 {
        publisher.publish(&topic, Message::new(format!("m{i}"))).await.unwrap();
    }
    let consumer = connect(&broker.url(), &instance).await;
    let mut sub = consumer.subscribe(&topic, options).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        let delivery = next(&mut sub).await;
        got.push(text(&delivery));
        delivery.ack().await.unwrap();
    }
    assert_eq!(got, (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>(), "the first ten, in order");
    publisher.publish(&topic, Message::new("after")).await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "after", "m10 to m29 were dropped by the broker");
    close(&publisher).await;
    close(&consumer).await;
}

/// A message nacked again and again comes back each time, with a growing attempt, and the
/// session resumes behind it are paced like reconnections (`reconnect_min`, doubling up to
/// `reconnect_max`, once they follow each other within a second): a handler that fails
/// everything does not become a reconnection storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_nacks_are_paced() {
    let ps = connect(&shared_url(), &unique("nacks")).await;
    let topic = unique("nacks/t");
    let mut sub = ps.subscribe(&topic, SubscribeOptions::group("g")).await.unwrap();
    ps.publish(&topic, Message::new("again")).await.unwrap();
    let first = next(&mut sub).await;
    let id = first.message().id();
    first.nack().await.unwrap();
    let started = Instant::now();
    let mut attempts = Vec::new();
    for _ in 0..4 {
        let delivery = next(&mut sub).await;
        assert_eq!(delivery.message().id(), id);
        attempts.push(delivery.attempt());
        delivery.nack().await.unwrap();
    }
    let last = next(&mut sub).await;
    assert_eq!(last.message().id(), id);
    last.ack().await.unwrap();
    assert_eq!(attempts, [2, 3, 4, 5]);
    // Four resumes within a second of the one before, paced like reconnections (this test's
    // backoff: 50 ms doubling up to 500 ms): at least 50 + 100 + 200 + 400 ms.
    assert!(started.elapsed() >= Duration::from_millis(750), "resumes paced: {:?}", started.elapsed());
    close(&ps).await;
}
