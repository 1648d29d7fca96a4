//! What the AMQP backend promises beyond the conformance suite, against the real RabbitMQ:
//! unroutable publishes fail, stale delivery tags after a reconnection are refused without
//! closing the new channel, the prefetch bounds what is in flight, a rejected message lands in
//! the dead-letter queue with its reason, conflicting declarations name what conflicts, quorum
//! queues count attempts exactly, and a handler slower than `consumer_timeout` loses nothing.
#![cfg(feature = "amqp")]

use std::time::Duration;

use millstream::pubsub::amqp::{lapin, AmqpConfig, AmqpPubSub, Preset};
use millstream::pubsub::{Attempts, Delivery, Subscription};
use millstream::{keys, ErrorKind, Message, Publisher, SubscribeOptions, Subscriber};

use crate::support::amqp as support;

/// How long any expected event may take.
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long a negative check watches (nothing may arrive meanwhile).
const QUIET: Duration = Duration::from_millis(1500);
const EXCHANGE: &str = "mstest";

/// A name unique to this test and run.
fn unique(what: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("amqp.{what}.{}", &id[id.len() - 12..])
}

fn config(name: &str) -> AmqpConfig {
    AmqpConfig::new(support::url()).topology(Preset::groups(EXCHANGE)).connection_name(name)
}

async fn connect(config: AmqpConfig) -> AmqpPubSub {
    tokio::time::timeout(TIMEOUT, AmqpPubSub::connect(config))
        .await
        .expect("connect in time")
        .expect("connect")
}

async fn next(sub: &mut Subscription, what: &str) -> Delivery {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            match sub.next().await {
                Some(Ok(delivery)) => return delivery,
                Some(Err(error)) => eprintln!("{what}: stream error: {error:?}"),
                None => panic!("{what}: the subscription ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(delivery.message().payload()).into_owned()
}

async fn close(pubsub: &AmqpPubSub) {
    Publisher::close(pubsub).await.expect("close publisher");
    Subscriber::close(pubsub).await.expect("close subscriber");
}

/// Deletes the test's queues (every queue whose name has `part`).
async fn cleanup(pubsub: &AmqpPubSub, part: &str) {
    if !support::local() {
        return;
    }
    let part = part.to_owned();
    let queues = tokio::task::spawn_blocking(move || support::queues_containing(&part)).await.expect("list");
    let channel = pubsub.connection().await.expect("connection").create_channel().await.expect("channel");
    for queue in queues {
        let _ = channel.queue_delete(queue.as_str().into(), Default::default()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_publish_is_an_error() {
    let _lock = support::shared().await;
    let name = unique("unroutable");
    let pubsub = connect(config(&name)).await;
    let error = pubsub.publish(&name, Message::new("nobody listens")).await.expect_err("unroutable");
    assert!(error.to_string().contains("unroutable"), "{error}");
    // Once a group exists, the same topic routes.
    let mut sub = pubsub.subscribe(&name, SubscribeOptions::group("g")).await.expect("subscribe");
    pubsub.publish(&name, Message::new("now routed")).await.expect("routed publish");
    let delivery = next(&mut sub, "the routed message").await;
    assert_eq!(text(&delivery), "now routed");
    delivery.ack().await.expect("ack");
    cleanup(&pubsub, &name).await;
    close(&pubsub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_key_over_255_bytes_is_refused() {
    let _lock = support::shared().await;
    let name = unique("longkey");
    let pubsub = connect(config(&name)).await;
    let message = Message::new("x").with_header("k".repeat(256), "v");
    let error = pubsub.publish(&name, message).await.expect_err("a 256-byte header name");
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    assert!(error.is_permanent() && error.to_string().contains("255"), "{error}");
    close(&pubsub).await;
}

/// The pid of the server's connection named `name` (`rabbitmqctl list_connections`).
fn connection_pid(name: &str) -> Option<String> {
    let out =
        support::rabbitmqctl(&["list_connections", "-q", "--no-table-headers", "pid", "client_properties"])
            .ok()?;
    out.lines()
        .find(|line| line.contains(name))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_delivery_tag_after_a_reconnection_does_not_close_the_new_channel() {
    if !support::local() {
        eprintln!("skipped: needs rabbitmqctl on the server's machine");
        return;
    }
    let _lock = support::shared().await;
    let name = unique("stale");
    let pubsub = connect(config(&name)).await;
    // One in flight at a time: the old channel holds exactly the delivery that goes stale.
    let options = SubscribeOptions::group("g").max_in_flight(1);
    let mut sub = pubsub.subscribe(&name, options).await.expect("subscribe");
    for i in 0..3 {
        pubsub.publish(&name, Message::new(format!("m{i}"))).await.expect("publish");
    }
    let old = next(&mut sub, "a delivery before the reconnection").await;
    assert_eq!(text(&old), "m0");
    // The server closes our connection (as a restart or a network cut would).
    let pid = tokio::time::timeout(TIMEOUT, async {
        loop {
            let name = name.clone();
            if let Some(pid) = tokio::task::spawn_blocking(move || connection_pid(&name)).await.expect("task")
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("our connection is listed");
    support::rabbitmqctl(&["close_connection", &pid, "test: forced reconnection"]).expect("close_connection");
    // The subscription comes back on a new connection and channel; the broker redelivers.
    let again = next(&mut sub, "the unsettled message on the new channel").await;
    assert_eq!(text(&again), "m0");
    assert_eq!(again.attempt(), 2, "flagged redelivered");
    // The old delivery's tag (1) is the new delivery's tag too on the new channel: acking it
    // there would settle the wrong delivery. Refused here instead.
    let error = old.ack().await.expect_err("a stale delivery is not acked on the new channel");
    assert!(error.to_string().contains("stale"), "{error}");
    // The new channel is still open: its deliveries settle, and new messages arrive on it.
    again.ack().await.expect("ack on the new channel");
    for expected in ["m1", "m2"] {
        let delivery = next(&mut sub, "the rest on the new channel").await;
        assert_eq!(text(&delivery), expected);
        delivery.ack().await.expect("ack on the new channel");
    }
    pubsub.publish(&name, Message::new("after")).await.expect("publish after");
    let after = next(&mut sub, "a message after the stale ack").await;
    assert_eq!(text(&after), "after");
    after.ack().await.expect("the channel is still open");
    let quiet = tokio::time::timeout(QUIET, sub.next()).await;
    assert!(quiet.is_err(), "nothing is redelivered: every ack on the new channel held");
    cleanup(&pubsub, &name).await;
    close(&pubsub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_bounds_deliveries_in_flight() {
    let _lock = support::shared().await;
    let name = unique("prefetch");
    let pubsub = connect(config(&name)).await;
    let mut sub =
        pubsub.subscribe(&name, SubscribeOptions::group("g").max_in_flight(3)).await.expect("subscribe");
    for i in 0..10 {
        pubsub.publish(&name, Message::new(format!("p{i}"))).await.expect("publish");
    }
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut sub, "the first three").await);
    }
    let fourth = tokio::time::timeout(QUIET, sub.next()).await;
    assert!(fourth.is_err(), "a fourth delivery arrived while three were unsettled");
    held.remove(0).ack().await.expect("ack");
    held.push(next(&mut sub, "one more once one is settled").await);
    let fifth = tokio::time::timeout(QUIET, sub.next()).await;
    assert!(fifth.is_err(), "still at most three in flight");
    for delivery in held {
        delivery.ack().await.expect("ack");
    }
    for _ in 0..6 {
        next(&mut sub, "the rest").await.ack().await.expect("ack");
    }
    cleanup(&pubsub, &name).await;
    close(&pubsub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_message_lands_in_the_dead_letter_queue_with_its_reason() {
    let _lock = support::shared().await;
    let name = unique("reject");
    let pubsub = connect(config(&name)).await;
    let mut sub = pubsub.subscribe(&name, SubscribeOptions::group("g")).await.expect("subscribe");
    let sent = Message::new("bad order").with_header("sku", "X-1").with_key("order-7");
    pubsub.publish(&name, sent.clone()).await.expect("publish");
    next(&mut sub, "the message to reject").await.reject("sku X-1 does not exist").await.expect("reject");
    let dlq = format!("g.{name}.dlq");
    let channel = pubsub.connection().await.expect("connection").create_channel().await.expect("channel");
    let got = tokio::time::timeout(TIMEOUT, async {
        loop {
            let got = channel
                .basic_get(dlq.as_str().into(), lapin::options::BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            if let Some(got) = got {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the rejected message in the dead-letter queue");
    let properties = &got.delivery.properties;
    assert_eq!(properties.message_id().as_ref().map(|id| id.to_string()), Some(sent.id().to_string()));
    let headers = properties.headers().as_ref().expect("headers").inner();
    let header = |key: &str| match headers.get(key) {
        Some(lapin::types::AMQPValue::LongString(v)) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        other => panic!("header {key}: {other:?}"),
    };
    assert_eq!(header(keys::poison::REASON), "sku X-1 does not exist");
    assert_eq!(header("sku"), "X-1");
    assert_eq!(header(keys::KEY), "order-7");
    assert_eq!(got.delivery.data, b"bad order");
    // And it is not delivered again to the group.
    let quiet = tokio::time::timeout(QUIET, sub.next()).await;
    assert!(quiet.is_err(), "the rejected message came back");
    cleanup(&pubsub, &name).await;
    close(&pubsub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_declaration_names_the_queue_and_the_argument() {
    let _lock = support::shared().await;
    let name = unique("conflict");
    let classic = connect(config(&name)).await;
    drop(classic.subscribe(&name, SubscribeOptions::group("g")).await.expect("a classic group queue"));
    // Declared again the same way: idempotent.
    drop(classic.subscribe(&name, SubscribeOptions::group("g")).await.expect("declared again"));
    let quorum = connect(config(&name).topology(Preset::groups(EXCHANGE).quorum())).await;
    let error = quorum.subscribe(&name, SubscribeOptions::group("g")).await.expect_err("classic vs quorum");
    let text = error.to_string();
    assert_eq!(error.kind(), ErrorKind::Config, "{text}");
    assert!(error.is_permanent(), "{text}");
    eprintln!("{text}");
    assert!(text.contains(&format!("g.{name}")) && text.contains("x-queue-type"), "{text}");
    cleanup(&classic, &name).await;
    close(&quorum).await;
    close(&classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_count_attempts_exactly_through_retry_queues() {
    let _lock = support::shared().await;
    let name = unique("quorum");
    let pubsub = connect(config(&name).topology(Preset::groups(EXCHANGE).quorum())).await;
    assert_eq!(pubsub.features().attempts, Attempts::Exact);
    let mut sub = pubsub.subscribe(&name, SubscribeOptions::group("g")).await.expect("subscribe");
    let sent = Message::new("count me");
    pubsub.publish(&name, sent.clone()).await.expect("publish");
    let first = next(&mut sub, "attempt 1").await;
    assert_eq!(first.attempt(), 1);
    first.nack().await.expect("nack");
    let second = next(&mut sub, "attempt 2").await;
    assert_eq!(second.attempt(), 2);
    let (_, _, acker) = second.into_parts();
    acker.nack_after(Some(Duration::from_millis(300))).await.expect("nack with delay: a retry queue");
    let third = next(&mut sub, "attempt 3, back from the retry queue").await;
    assert_eq!(third.message().id(), sent.id(), "the id survives the retry queue");
    assert_eq!(third.attempt(), 3, "attempts survive the retry queue");
    third.release().await.expect("release");
    let fourth = next(&mut sub, "attempt 4").await;
    assert_eq!(fourth.attempt(), 4, "a release is counted by the broker");
    fourth.ack().await.expect("ack");
    cleanup(&pubsub, &name).await;
    close(&pubsub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_say_at_least() {
    let _lock = support::shared().await;
    let name = unique("classic");
    let pubsub = connect(config(&name)).await;
    assert_eq!(pubsub.features().attempts, Attempts::AtLeast);
    let mut sub = pubsub.subscribe(&name, SubscribeOptions::group("g")).await.expect("subscribe");
    pubsub.publish(&name, Message::new("m")).await.expect("publish");
    let first = next(&mut sub, "first").await;
    assert_eq!(first.attempt(), 1);
    first.nack().await.expect("nack");
    let again = next(&mut sub, "again").await;
    assert_eq!(again.attempt(), 2, "redelivered: at least 2");
    again.ack().await.expect("ack");
    cleanup(&pubsub, &name).await;
    close(&pubsub).await;
}

/// Sets the server's `consumer_timeout` (milliseconds) and puts the old value back when dropped.
struct ConsumerTimeout(String);

impl ConsumerTimeout {
    fn set(millis: u64) -> ConsumerTimeout {
        let old = support::rabbitmqctl(&["eval", "application:get_env(rabbit, consumer_timeout)."])
            .expect("read consumer_timeout");
        let old = old.trim().trim_start_matches("{ok,").trim_end_matches('}').trim().to_owned();
        let old = if old.parse::<u64>().is_ok() { old } else { "1800000".to_owned() };
        support::rabbitmqctl(&["eval", &format!("application:set_env(rabbit, consumer_timeout, {millis}).")])
            .expect("set consumer_timeout");
        // Channels check the timeout on their tick, once a minute by default: tick faster (new
        // channels read it when they open).
        support::rabbitmqctl(&[
            "eval",
            &format!("application:set_env(rabbit, channel_tick_interval, {millis})."),
        ])
        .expect("set channel_tick_interval");
        ConsumerTimeout(old)
    }
}

impl Drop for ConsumerTimeout {
    fn drop(&mut self) {
        let restore = format!("application:set_env(rabbit, consumer_timeout, {}).", self.0);
        if let Err(error) = support::rabbitmqctl(&["eval", &restore]) {
            eprintln!("restoring consumer_timeout failed: {error}");
        }
        // Not unset: running channels read it at every tick (and crash on `undefined`). 60 s is
        // the server's default.
        let tick = "application:set_env(rabbit, channel_tick_interval, 60000).";
        if let Err(error) = support::rabbitmqctl(&["eval", tick]) {
            eprintln!("restoring channel_tick_interval failed: {error}");
        }
    }
}

/// A handler slower than the server's `consumer_timeout` (1 s here, checked every second): the
/// server closes the channel and
/// requeues; the subscription re-attaches, the message comes again, the slow handler's late ack
/// is refused as stale, and nothing is lost. Runs alone (the exclusive lock): the timeout is a
/// server-wide setting in RabbitMQ 3.10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_consumer_timeout_loses_nothing() {
    if !support::local() {
        eprintln!("skipped: needs rabbitmqctl on the server's machine");
        return;
    }
    let _lock = tokio::task::spawn_blocking(support::exclusive_blocking).await.expect("task").expect("lock");
    let timeout = tokio::task::spawn_blocking(|| ConsumerTimeout::set(1000)).await.expect("task");
    let name = unique("slow");
    let pubsub = connect(config(&name)).await;
    let mut sub =
        pubsub.subscribe(&name, SubscribeOptions::group("g").max_in_flight(1)).await.expect("subscribe");
    pubsub.publish(&name, Message::new("slow")).await.expect("publish");
    pubsub.publish(&name, Message::new("next")).await.expect("publish");
    let held = next(&mut sub, "the delivery a slow handler holds").await;
    assert_eq!(text(&held), "slow");
    let started = std::time::Instant::now();
    // The handler takes longer than the timeout; the server gives the message out again.
    let again = next(&mut sub, "the message again after consumer_timeout").await;
    eprintln!("redelivered after {:?}", started.elapsed());
    assert_eq!(text(&again), "slow");
    let error = held.ack().await.expect_err("the late ack is refused");
    assert!(error.to_string().contains("stale"), "{error}");
    again.ack().await.expect("ack");
    let following = next(&mut sub, "the subscription goes on").await;
    assert_eq!(text(&following), "next");
    following.ack().await.expect("ack");
    drop(timeout);
    cleanup(&pubsub, &name).await;
    close(&pubsub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_names_the_concrete_topic() {
    let _lock = support::shared().await;
    let name = unique("pattern");
    let pubsub = connect(config(&name)).await;
    let options = SubscribeOptions::group("g").pattern();
    let mut sub = pubsub.subscribe(&format!("{name}.*"), options).await.expect("subscribe");
    pubsub.publish(&format!("{name}.eu"), Message::new("eu")).await.expect("publish");
    pubsub.publish(&format!("{name}.us"), Message::new("us")).await.expect("publish");
    for region in ["eu", "us"] {
        let delivery = next(&mut sub, "a delivery of the pattern").await;
        assert_eq!(text(&delivery), region);
        let topic = delivery.info().and_then(|info| info.topic.as_deref().map(str::to_owned));
        assert_eq!(topic.as_deref(), Some(format!("{name}.{region}").as_str()));
        delivery.ack().await.expect("ack");
    }
    cleanup(&pubsub, &name).await;
    close(&pubsub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_queue_keeps_messages_published_before_any_consumer() {
    let _lock = support::shared().await;
    let name = unique("work");
    let pubsub = connect(config(&name).topology(Preset::work_queue())).await;
    assert!(pubsub.features().history && !pubsub.features().refuses_unroutable);
    pubsub.publish(&name, Message::new("early")).await.expect("the publisher declares the queue");
    // Two subscriptions (in different groups, even) share the one queue.
    let mut a = pubsub.subscribe(&name, SubscribeOptions::group("a")).await.expect("subscribe");
    let mut b = pubsub.subscribe(&name, SubscribeOptions::group("b")).await.expect("subscribe");
    let early = next(&mut a, "the message published before any consumer").await;
    assert_eq!(text(&early), "early");
    early.ack().await.expect("ack");
    pubsub.publish(&name, Message::new("late")).await.expect("publish");
    let late = tokio::select! {
        d = next(&mut a, "late") => d,
        d = next(&mut b, "late") => d,
    };
    assert_eq!(text(&late), "late");
    late.ack().await.expect("ack");
    cleanup(&pubsub, &name).await;
    close(&pubsub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_gives_every_group_every_message() {
    let _lock = support::shared().await;
    let name = unique("fanout");
    let pubsub = connect(config(&name).topology(Preset::fan_out())).await;
    let mut a = pubsub.subscribe(&name, SubscribeOptions::group("a")).await.expect("subscribe");
    let mut b = pubsub.subscribe(&name, SubscribeOptions::group("b")).await.expect("subscribe");
    let mut private = pubsub.subscribe(&name, SubscribeOptions::default()).await.expect("subscribe");
    pubsub.publish(&name, Message::new("to all")).await.expect("publish");
    for sub in [&mut a, &mut b, &mut private] {
        let delivery = next(sub, "the fanned-out message").await;
        assert_eq!(text(&delivery), "to all");
        delivery.ack().await.expect("ack");
    }
    cleanup(&pubsub, &name).await;
    let channel = pubsub.connection().await.expect("connection").create_channel().await.expect("channel");
    channel.exchange_delete(name.as_str().into(), Default::default()).await.expect("delete the exchange");
    close(&pubsub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_does_not_show_the_password() {
    let _lock = support::shared().await;
    let wrong = support::url().replacen("guest:guest@", "guest:hunter2-secret@", 1);
    if wrong == support::url() {
        eprintln!("skipped: the server URL has no guest:guest credentials to change");
        return;
    }
    let config = AmqpConfig::new(wrong).connection_name("secret-test");
    assert!(!format!("{config:?}").contains("hunter2"), "{config:?}");
    let error = AmqpPubSub::connect(config).await.expect_err("a wrong password");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("guest:***@"), "the redacted URI names the server: {shown}");
}

/// A connection that dies without a close (no FIN, no error; the heartbeat not yet due) must not
/// hold publishes forever: past `publish_timeout` the publish fails as a timeout, the connection
/// is dropped, and the next publish goes through on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_a_stalled_connection_times_out_and_the_next_reconnects() {
    let _lock = support::shared().await;
    let name = unique("stalled");
    let direct = connect(config(&format!("{name}-direct"))).await;
    let mut sub = direct.subscribe(&name, SubscribeOptions::group("g")).await.expect("subscribe");

    let Ok(server) = support::host_port().parse::<std::net::SocketAddr>() else {
        eprintln!("skipped: the server address {} is not an IP address and port", support::host_port());
        return;
    };
    if !support::url().contains(&support::host_port()) {
        eprintln!("skipped: the server URL names no port to replace");
        return;
    }
    let relay = crate::support::stall::StallingRelay::start(server).await;
    let url = support::url().replacen(&support::host_port(), &relay.addr().to_string(), 1);
    // No heartbeat: only the publish timeout can notice the stall.
    let url = format!("{url}{}heartbeat=0", if url.contains('?') { '&' } else { '?' });
    let relayed = connect(
        AmqpConfig::new(url)
            .topology(Preset::groups(EXCHANGE))
            .connection_name(&name)
            .publish_timeout(Duration::from_secs(1)),
    )
    .await;
    relayed.publish(&name, Message::new("before")).await.expect("publish before the stall");
    assert_eq!(text(&next(&mut sub, "the message before the stall").await), "before");

    relay.stall();
    let started = std::time::Instant::now();
    let error = tokio::time::timeout(TIMEOUT, relayed.publish(&name, Message::new("stalled")))
        .await
        .expect("the publish returns instead of waiting for ever")
        .expect_err("a publish on a stalled connection fails");
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    assert!(!error.is_permanent(), "a timeout is worth retrying: {error}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed after the 1 s timeout: {:?}",
        started.elapsed()
    );

    let before = relay.accepted();
    relayed.publish(&name, Message::new("after")).await.expect("the next publish reconnects");
    assert!(relay.accepted() > before, "the next publish made a new connection");
    // "stalled" may or may not have reached the broker (at-least-once); "after" must arrive.
    let mut seen = Vec::new();
    while !seen.contains(&"after".to_owned()) {
        let delivery = next(&mut sub, "the message after the stall").await;
        seen.push(text(&delivery));
        delivery.ack().await.expect("ack");
    }
    cleanup(&direct, &name).await;
    close(&relayed).await;
    close(&direct).await;
    drop(relay);
}
