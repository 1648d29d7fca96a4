//! The cases of the suite. Each is a `fn(Arc<Ctx>) -> BoxFuture<()>` that panics on failure and
//! returns early (printing why) when the backend's features rule it out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::{
    next_delivery, spawn_consumer, text, unique, within, Action, BoxFuture, Case, Ctx, Received, QUIET,
};
use crate::error::ErrorKind;
use crate::message::{Message, Metadata};
use crate::pubsub::{PubSub, SubscribeOptions};
use crate::{Publisher, Subscriber};

macro_rules! cases {
    ($($(#[$doc:meta])* $name:ident => $body:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(ctx: Arc<Ctx>) -> BoxFuture<'static, ()> {
                Box::pin(async move { $body(&ctx).await })
            }
        )*
        /// Every case, by name, in the order the suite runs them.
        pub const ALL: &[(&str, Case)] = &[$((stringify!($name), $name as Case)),*];
    };
}

cases! {
    /// Subscribe, publish; every message arrives once with its id, payload and metadata intact.
    publish_subscribe => publish_subscribe_case,
    /// Many topics at once, each subscriber gets exactly its topic's messages.
    many_topics => many_topics_case,
    /// Several subscriptions on one topic (one group, or each on its own): nothing is lost.
    concurrent_subscribers => concurrent_subscribers_case,
    /// A nacked message comes back, with a higher attempt.
    nack_redelivers => nack_redelivers_case,
    /// Every message nacked twice is still consumed in the end.
    many_nacks_all_consumed => many_nacks_case,
    /// With strict order, no next message before the current one is settled.
    no_next_before_ack => no_next_before_ack_case,
    /// Subscribe, take a few, close, again and again (new connections when persistent): nothing lost.
    resubscribe_without_loss => resubscribe_case,
    /// Subscriptions created and dropped concurrently while messages flow: nothing lost.
    subscribe_close_concurrently => subscribe_close_concurrently_case,
    /// Interleaved streams of keyed messages from concurrent publishers keep each key's order.
    order_per_key => order_per_key_case,
    /// Many concurrent publishers, each closed at the end: nothing lost, publish after close fails.
    concurrent_publishers_then_close => concurrent_publishers_case,
    /// Two topics, published interleaved: each subscriber sees only its own.
    topics_isolated => topics_isolated_case,
    /// Dropping a subscription ends it; its unacked message goes to the next subscriber of the group.
    cancel_subscription => cancel_subscription_case,
    /// Closing the subscriber ends every subscription's stream.
    close_ends_streams => close_ends_streams_case,
    /// Two consumer groups each get every message.
    two_groups_each_get_everything => two_groups_case,
    /// An unacked message is delivered again after the consumer's connection closed (persistent).
    redelivery_after_reconnect => redelivery_after_reconnect_case,
    /// A group created after the messages were published still gets them (history).
    late_group_gets_history => late_group_case,
    /// `nack_after(delay)` redelivers, and not before the delay.
    nack_with_delay => nack_with_delay_case,
    /// 1 MiB payloads (or the backend's declared maximum, if smaller) round-trip byte for byte.
    large_payloads => large_payloads_case,
    /// A payload one byte over the declared `max_payload` is refused at publish with a permanent
    /// `ErrorKind::Config` error; one of exactly `max_payload` bytes then round-trips.
    oversized_payload_refused => oversized_payload_case,
    /// Metadata with unicode keys and values, and empty values, round-trips.
    metadata_unicode_and_empty => metadata_case,
    /// The server restarts while a publisher publishes without a pause and a group consumes:
    /// everything arrives; publish failures the caller saw and duplicates are reported.
    server_restart => server_restart_case,
    /// Three deliveries held at once; the third and the second acked, the first left unsettled as a
    /// crash leaves it; on a new connection the first comes back, and (settling individually) the
    /// others do not.
    acks_out_of_order_then_reconnect => acks_out_of_order_case,
    /// Keyed messages (three keys) to three subscriptions of one group: each key in publish order.
    keyed_order_across_subscribers => keyed_order_case,
    /// A message nacked twice arrives the third time as attempt 3 (where attempts are exact).
    attempts_are_counted => attempts_counted_case,
    /// A rejected message is never delivered again; the next one is.
    reject_never_redelivers => reject_case,
    /// A released message comes back, without an attempt counted where the backend says so.
    release_gives_back => release_case,
    /// A subscription without a group sees everything published after it subscribed (and a
    /// backend that refuses unroutable publishes refuses those made before).
    groupless_sees_what_follows => groupless_case,
    /// A second consumer joins a group in the middle of a stream: nothing is lost.
    join_group_under_load => join_group_case,
    /// A delivery held past the backend's ack deadline comes back; the late ack is reported or
    /// ignored, never fatal, and the subscription goes on.
    slow_handler_past_the_deadline => slow_handler_case,
    /// A router closed while its handler is still running (close timeout passed), again and
    /// again: each time the aborted delivery is given back before the backend closes, so the next
    /// consumer of the group gets it at once, not after the backend's ack deadline.
    forced_close_gives_back_at_once => forced_close_case,
}

fn by_text(message: &Message) -> String {
    text(message)
}

fn ack_all(_: &Message, _: u32) -> Action {
    Action::Ack
}

fn numbered(tag: &str, n: usize) -> Message {
    Message::new(format!("{tag}:{n}")).with_header("n", n.to_string())
}

async fn publish_all(conn: &dyn PubSub, topic: &str, messages: impl IntoIterator<Item = Message>) {
    for message in messages {
        within("publish", conn.publish(topic, message)).await.expect("publish");
    }
}

fn group(name: &str) -> SubscribeOptions {
    SubscribeOptions::group(format!("{name}-{}", unique()))
}

fn sorted_metadata(metadata: &Metadata) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = metadata.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    pairs.sort();
    pairs
}

async fn close(conn: &dyn PubSub) {
    within("close publisher", Publisher::close(conn)).await.expect("close publisher");
    within("close subscriber", Subscriber::close(conn)).await.expect("close subscriber");
}

async fn publish_subscribe_case(ctx: &Ctx) {
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let mut sub = within("subscribe", conn.subscribe(&topic, group("g"))).await.expect("subscribe");
    let n = ctx.count(20, 1000);
    let sent: Vec<Message> = (0..n)
        .map(|i| numbered("rt", i).with_header("kind", "round-trip").with_header("index", format!("{i:05}")))
        .collect();
    publish_all(&*conn, &topic, sent.clone()).await;
    let by_id: HashMap<_, _> = sent.iter().map(|m| (m.id(), m)).collect();
    let received = Received::new();
    for _ in 0..n {
        let delivery = next_delivery(&mut sub, "round-trip delivery").await;
        let message = delivery.message();
        let original = by_id.get(&message.id()).unwrap_or_else(|| panic!("unknown id {}", message.id()));
        assert_eq!(message.payload(), original.payload(), "payload of {}", message.id());
        assert_eq!(sorted_metadata(message.metadata()), sorted_metadata(original.metadata()), "metadata");
        assert!(delivery.attempt() >= 1, "attempts count from 1");
        received.record(&text(message));
        within("ack", delivery.ack()).await.expect("ack");
    }
    ctx.report("", n, &received, true);
    assert_eq!(received.totals().0, n, "every message once");
    close(&*conn).await;
}

async fn many_topics_case(ctx: &Ctx) {
    let conn = ctx.connect().await;
    let topics: Vec<String> = (0..ctx.count(5, 20)).map(|_| ctx.topic()).collect();
    let per_topic = ctx.count(20, 200);
    let mut consumers = Vec::new();
    for topic in &topics {
        let sub = within("subscribe", conn.subscribe(topic, group("g"))).await.expect("subscribe");
        let received = Received::new();
        consumers.push((received.clone(), spawn_consumer(sub, received, by_text, ack_all)));
    }
    join_all(topics.iter().map(|topic| {
        let conn = conn.clone();
        async move { publish_all(&*conn, topic, (0..per_topic).map(|i| numbered(topic, i))).await }
    }))
    .await;
    for (topic, (received, _)) in topics.iter().zip(&consumers) {
        received.wait_unique(per_topic, topic).await;
        assert!(
            received.order().iter().all(|k| k.starts_with(&format!("{topic}:"))),
            "only {topic}'s messages"
        );
        ctx.report(topic, per_topic, received, true);
    }
    close(&*conn).await;
    for (_, handle) in consumers {
        within("consumer ends", handle).await.expect("consumer");
    }
}

async fn concurrent_subscribers_case(ctx: &Ctx) {
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let n = ctx.count(100, 3000);
    let subs = 4;
    let shared = ctx.features().consumer_groups;
    let options = group("shared");
    // In one group they share one record (together they get everything); alone each gets its own.
    let group_record = Received::new();
    let mut all = Vec::new();
    for _ in 0..subs {
        let opts = if shared { options.clone() } else { SubscribeOptions::default() };
        let sub = within("subscribe", conn.subscribe(&topic, opts)).await.expect("subscribe");
        let received = if shared { group_record.clone() } else { Received::new() };
        all.push((received.clone(), spawn_consumer(sub, received, by_text, ack_all)));
    }
    let publisher = ctx.connect().await;
    publish_all(&*publisher, &topic, (0..n).map(|i| numbered("c", i))).await;
    if shared {
        group_record.wait_unique(n, "every message by some subscriber of the group").await;
        ctx.report("group", n, &group_record, true);
    } else {
        for (received, _) in &all {
            received.wait_unique(n, "each subscriber gets everything").await;
            ctx.report("own", n, received, true);
        }
    }
    close(&*conn).await;
    close(&*publisher).await;
    for (_, handle) in all {
        within("consumer ends", handle).await.expect("consumer");
    }
}

async fn nack_redelivers_case(ctx: &Ctx) {
    if !ctx.needs("redelivery", ctx.features().redelivery) {
        return;
    }
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let mut sub = within("subscribe", conn.subscribe(&topic, group("g"))).await.expect("subscribe");
    publish_all(&*conn, &topic, [numbered("nack", 1)]).await;
    let first = next_delivery(&mut sub, "first delivery").await;
    let (id, attempt) = (first.message().id(), first.attempt());
    within("nack", first.nack()).await.expect("nack");
    let again = next_delivery(&mut sub, "redelivery").await;
    assert_eq!(again.message().id(), id, "the nacked message comes back");
    assert!(again.attempt() > attempt, "attempt {} after {attempt}", again.attempt());
    within("ack", again.ack()).await.expect("ack");
    // Acked for good: the next message is the next one.
    publish_all(&*conn, &topic, [numbered("nack", 2)]).await;
    let next = next_delivery(&mut sub, "second message").await;
    assert_eq!(text(next.message()), "nack:2", "an acked message is not delivered again");
    within("ack", next.ack()).await.expect("ack");
    close(&*conn).await;
}

async fn many_nacks_case(ctx: &Ctx) {
    if !ctx.needs("redelivery", ctx.features().redelivery) {
        return;
    }
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let n = ctx.count(20, 500);
    let sub = within("subscribe", conn.subscribe(&topic, group("g"))).await.expect("subscribe");
    let received = Received::new();
    // Each message is nacked on its first two deliveries and acked on the third.
    let handle =
        spawn_consumer(
            sub,
            received.clone(),
            by_text,
            |_, seen| if seen < 3 { Action::Nack } else { Action::Ack },
        );
    publish_all(&*conn, &topic, (0..n).map(|i| numbered("nn", i))).await;
    within("every message delivered three times", async {
        loop {
            let notified = received.changed.notified();
            let done = {
                let state = received.state.lock();
                state.counts.len() >= n && state.counts.values().all(|c| *c >= 3)
            };
            if done {
                break;
            }
            notified.await;
        }
    })
    .await;
    ctx.report("", n, &received, false);
    close(&*conn).await;
    within("consumer ends", handle).await.expect("consumer");
}

async fn no_next_before_ack_case(ctx: &Ctx) {
    if !ctx.needs("strict order", ctx.features().strict_order) {
        return;
    }
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let mut sub = within("subscribe", conn.subscribe(&topic, group("g"))).await.expect("subscribe");
    publish_all(&*conn, &topic, [numbered("o", 1), numbered("o", 2)]).await;
    let first = next_delivery(&mut sub, "first").await;
    assert_eq!(text(first.message()), "o:1");
    // Negative check: nothing may arrive while the first is unsettled.
    if let Ok(item) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!(
            "a delivery arrived before the previous one was settled: {:?}",
            item.map(|r| r.map(|d| text(d.message())))
        );
    }
    within("nack", first.nack()).await.expect("nack");
    let again = next_delivery(&mut sub, "redelivery").await;
    assert_eq!(text(again.message()), "o:1", "a nacked message comes back before later ones");
    within("ack", again.ack()).await.expect("ack");
    let second = next_delivery(&mut sub, "second").await;
    assert_eq!(text(second.message()), "o:2");
    within("ack", second.ack()).await.expect("ack");
    close(&*conn).await;
}

async fn resubscribe_case(ctx: &Ctx) {
    if !ctx.needs("consumer groups", ctx.features().consumer_groups) {
        return;
    }
    let persistent = ctx.features().persistent;
    let n = ctx.count(50, 1000);
    let chunk = ctx.count(7, 60);
    let topic = ctx.topic();
    let options = group("resub");
    let mut conn = ctx.connect().await;
    // Create the group first so that it exists when the messages are published.
    drop(within("subscribe", conn.subscribe(&topic, options.clone())).await.expect("subscribe"));
    publish_all(&*conn, &topic, (0..n).map(|i| numbered("r", i))).await;
    let received = Received::new();
    let mut rounds = 0;
    while received.totals().0 < n {
        rounds += 1;
        assert!(rounds <= 3 * n / chunk + 20, "no progress after {rounds} rounds");
        if persistent && rounds % 2 == 0 {
            close(&*conn).await;
            conn = ctx.connect().await;
        }
        let mut sub = within("subscribe", conn.subscribe(&topic, options.clone())).await.expect("subscribe");
        for _ in 0..chunk {
            if received.totals().0 >= n {
                break;
            }
            let delivery = next_delivery(&mut sub, "a delivery after resubscribing").await;
            received.record(&text(delivery.message()));
            within("ack", delivery.ack()).await.expect("ack");
        }
        drop(sub);
    }
    ctx.report(&format!("{rounds} rounds"), n, &received, false);
    close(&*conn).await;
}

async fn subscribe_close_concurrently_case(ctx: &Ctx) {
    if !ctx.needs("consumer groups", ctx.features().consumer_groups) {
        return;
    }
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let options = group("churn");
    drop(within("subscribe", conn.subscribe(&topic, options.clone())).await.expect("subscribe"));
    let n = ctx.count(50, 500);
    let received = Received::new();
    let churners = (0..6).map(|_| {
        let (conn, topic, options, received) =
            (conn.clone(), topic.clone(), options.clone(), received.clone());
        let rounds = ctx.count(5, 25);
        tokio::spawn(async move {
            for _ in 0..rounds {
                let mut sub =
                    within("subscribe", conn.subscribe(&topic, options.clone())).await.expect("subscribe");
                // Take whatever comes quickly (maybe nothing), then drop the subscription.
                if let Ok(Some(Ok(delivery))) =
                    tokio::time::timeout(Duration::from_millis(50), sub.next()).await
                {
                    received.record(&text(delivery.message()));
                    let _ = delivery.ack().await;
                }
            }
        })
    });
    let churners: Vec<_> = churners.collect();
    publish_all(&*conn, &topic, (0..n).map(|i| numbered("cc", i))).await;
    for churner in churners {
        within("churner", churner).await.expect("churner");
    }
    // One last subscriber drains the rest.
    let sub = within("subscribe", conn.subscribe(&topic, options)).await.expect("subscribe");
    let handle = spawn_consumer(sub, received.clone(), by_text, ack_all);
    received.wait_unique(n, "every message after the churn").await;
    ctx.report("", n, &received, false);
    close(&*conn).await;
    within("consumer ends", handle).await.expect("consumer");
}

async fn order_per_key_case(ctx: &Ctx) {
    let f = ctx.features();
    if !ctx.needs("ordering", f.ordered) {
        return;
    }
    let keys = 4;
    let per_key = ctx.count(25, 500);
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let options = group("order");
    // Several subscriptions share the group unless order holds only with one.
    let subs = if f.ordered_single_subscriber || !f.consumer_groups { 1 } else { 3 };
    let received = Received::new();
    let mut handles = Vec::new();
    for _ in 0..subs {
        let opts = if f.consumer_groups { options.clone() } else { SubscribeOptions::default() };
        let sub = within("subscribe", conn.subscribe(&topic, opts)).await.expect("subscribe");
        handles.push(spawn_consumer(sub, received.clone(), by_text, ack_all));
    }
    // Interleaved streams: one publisher (connection) per key, all at once.
    join_all((0..keys).map(|key| {
        let topic = topic.clone();
        async move {
            let publisher = ctx.connect().await;
            publish_all(&*publisher, &topic, (0..per_key).map(|seq| Message::new(format!("k{key}:{seq}"))))
                .await;
            close(&*publisher).await;
        }
    }))
    .await;
    received.wait_unique(keys * per_key, "every keyed message").await;
    let mut next_expected: HashMap<String, usize> = HashMap::new();
    for entry in received.order() {
        let (key, seq) = entry.split_once(':').expect("key:seq");
        let seq: usize = seq.parse().expect("seq");
        let expected = next_expected.entry(key.to_owned()).or_insert(0);
        // A redelivery may repeat an earlier message; it may never skip ahead.
        assert!(seq <= *expected, "key {key}: got {seq} before {expected} ({subs} subscriptions)");
        if seq == *expected {
            *expected += 1;
        }
    }
    ctx.report(&format!("{subs} subscriptions"), keys * per_key, &received, true);
    close(&*conn).await;
    for handle in handles {
        within("consumer ends", handle).await.expect("consumer");
    }
}

async fn concurrent_publishers_case(ctx: &Ctx) {
    let consumer = ctx.connect().await;
    let topic = ctx.topic();
    let publishers = ctx.count(4, 16);
    let per_publisher = ctx.count(50, 500);
    let sub = within("subscribe", consumer.subscribe(&topic, group("g"))).await.expect("subscribe");
    let received = Received::new();
    let handle = spawn_consumer(sub, received.clone(), by_text, ack_all);
    join_all((0..publishers).map(|p| {
        let topic = topic.clone();
        async move {
            let publisher = ctx.connect().await;
            // Half one by one, half in a batch.
            let half = per_publisher / 2;
            publish_all(&*publisher, &topic, (0..half).map(|i| numbered(&format!("p{p}"), i))).await;
            let batch: Vec<_> = (half..per_publisher).map(|i| numbered(&format!("p{p}"), i)).collect();
            within("publish batch", publisher.publish_batch(&topic, batch)).await.expect("publish batch");
            within("close", Publisher::close(&*publisher)).await.expect("close publisher");
            let after = within("publish after close", publisher.publish(&topic, Message::new("late"))).await;
            assert!(after.is_err(), "publishing after close must fail");
            within("close subscriber", Subscriber::close(&*publisher)).await.expect("close subscriber");
        }
    }))
    .await;
    received.wait_unique(publishers * per_publisher, "every published message").await;
    assert!(!received.contains("late"), "a publish after close was delivered");
    ctx.report("", publishers * per_publisher, &received, true);
    close(&*consumer).await;
    within("consumer ends", handle).await.expect("consumer");
}

async fn topics_isolated_case(ctx: &Ctx) {
    let conn = ctx.connect().await;
    let (a, b) = (ctx.topic(), ctx.topic());
    let n = ctx.count(20, 500);
    let mut consumers = Vec::new();
    for topic in [&a, &b] {
        let sub = within("subscribe", conn.subscribe(topic, group("g"))).await.expect("subscribe");
        let received = Received::new();
        consumers.push((received.clone(), spawn_consumer(sub, received, by_text, ack_all)));
    }
    for i in 0..n {
        publish_all(&*conn, &a, [numbered("A", i)]).await;
        publish_all(&*conn, &b, [numbered("B", i)]).await;
    }
    for ((received, _), tag) in consumers.iter().zip(["A:", "B:"]) {
        received.wait_unique(n, tag).await;
        let foreign: Vec<_> = received.order().into_iter().filter(|k| !k.starts_with(tag)).collect();
        assert!(foreign.is_empty(), "topic {tag} received another topic's messages: {foreign:?}");
        ctx.report(tag, n, received, true);
    }
    close(&*conn).await;
    for (_, handle) in consumers {
        within("consumer ends", handle).await.expect("consumer");
    }
}

async fn cancel_subscription_case(ctx: &Ctx) {
    let f = ctx.features();
    if !ctx.needs("consumer groups with redelivery", f.consumer_groups && f.redelivery) {
        return;
    }
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let options = group("cancel");
    let mut first = within("subscribe", conn.subscribe(&topic, options.clone())).await.expect("subscribe");
    publish_all(&*conn, &topic, (0..3).map(|i| numbered("x", i))).await;
    let held = next_delivery(&mut first, "delivery to the first subscriber").await;
    let held_text = text(held.message());
    // Cancel the subscription while its delivery is unsettled; then the delivery goes too.
    drop(first);
    drop(held);
    let mut second = within("subscribe", conn.subscribe(&topic, options)).await.expect("subscribe");
    let received = Received::new();
    while received.totals().0 < 3 {
        let delivery = next_delivery(&mut second, "the next subscriber's deliveries").await;
        received.record(&text(delivery.message()));
        within("ack", delivery.ack()).await.expect("ack");
    }
    assert!(received.contains(&held_text), "the unacked message went to the next subscriber");
    ctx.report("", 3, &received, false);
    close(&*conn).await;
}

async fn close_ends_streams_case(ctx: &Ctx) {
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let mut grouped = within("subscribe", conn.subscribe(&topic, group("g"))).await.expect("subscribe");
    let mut private =
        within("subscribe", conn.subscribe(&topic, SubscribeOptions::default())).await.expect("subscribe");
    publish_all(&*conn, &topic, [numbered("z", 0)]).await;
    let delivery = next_delivery(&mut grouped, "a delivery before close").await;
    within("ack", delivery.ack()).await.expect("ack");
    close(&*conn).await;
    for sub in [&mut grouped, &mut private] {
        within("the stream ends after close", async {
            loop {
                match sub.next().await {
                    None => break,
                    Some(Err(_)) => continue,
                    // A message already in flight may still come out; nothing new will.
                    Some(Ok(delivery)) => drop(delivery),
                }
            }
        })
        .await;
    }
    assert!(within("subscribe after close", conn.subscribe(&topic, group("late"))).await.is_err());
}

async fn two_groups_case(ctx: &Ctx) {
    if !ctx.needs("consumer groups", ctx.features().consumer_groups) {
        return;
    }
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let n = ctx.count(50, 2000);
    let mut groups = Vec::new();
    for (name, subs) in [("g1", 2), ("g2", 1)] {
        let options = group(name);
        let received = Received::new();
        let mut handles = Vec::new();
        for _ in 0..subs {
            let sub = within("subscribe", conn.subscribe(&topic, options.clone())).await.expect("subscribe");
            handles.push(spawn_consumer(sub, received.clone(), by_text, ack_all));
        }
        groups.push((name, received, handles));
    }
    publish_all(&*conn, &topic, (0..n).map(|i| numbered("tg", i))).await;
    for (name, received, _) in &groups {
        received.wait_unique(n, name).await;
        ctx.report(name, n, received, true);
    }
    close(&*conn).await;
    for (_, _, handles) in groups {
        for handle in handles {
            within("consumer ends", handle).await.expect("consumer");
        }
    }
}

async fn redelivery_after_reconnect_case(ctx: &Ctx) {
    let f = ctx.features();
    if !ctx.needs("persistence with consumer groups", f.persistent && f.consumer_groups) {
        return;
    }
    let topic = ctx.topic();
    let options = group("durable");
    let n = ctx.count(10, 200);
    {
        let conn = ctx.connect().await;
        drop(within("subscribe", conn.subscribe(&topic, options.clone())).await.expect("create the group"));
        publish_all(&*conn, &topic, (0..n).map(|i| numbered("d", i))).await;
        close(&*conn).await;
    }
    let unacked = {
        // A consumer takes one message and goes away without settling it.
        let conn = ctx.connect().await;
        let mut sub = within("subscribe", conn.subscribe(&topic, options.clone())).await.expect("subscribe");
        let delivery = next_delivery(&mut sub, "delivery before the connection goes").await;
        let (message, _, acker) = delivery.into_parts();
        std::mem::forget(acker); // neither acked nor nacked: as if the process had died
        close(&*conn).await;
        text(&message)
    };
    let conn = ctx.connect().await;
    let sub = within("subscribe", conn.subscribe(&topic, options)).await.expect("subscribe");
    let received = Received::new();
    let handle = spawn_consumer(sub, received.clone(), by_text, ack_all);
    received.wait_unique(n, "every message on a new connection").await;
    assert!(received.contains(&unacked), "the unacked message was delivered again");
    ctx.report("", n, &received, false);
    close(&*conn).await;
    within("consumer ends", handle).await.expect("consumer");
}

async fn late_group_case(ctx: &Ctx) {
    if !ctx.needs("history", ctx.features().history) {
        return;
    }
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let n = ctx.count(3, 3);
    publish_all(&*conn, &topic, (0..n).map(|i| numbered("h", i))).await;
    let sub = within("subscribe", conn.subscribe(&topic, group("late"))).await.expect("subscribe");
    let received = Received::new();
    let handle = spawn_consumer(sub, received.clone(), by_text, ack_all);
    received.wait_unique(n, "history for a late group").await;
    ctx.report("", n, &received, true);
    close(&*conn).await;
    within("consumer ends", handle).await.expect("consumer");
}

async fn nack_with_delay_case(ctx: &Ctx) {
    let f = ctx.features();
    if !ctx.needs("nack with delay", f.redelivery && f.nack_delay) {
        return;
    }
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let mut sub = within("subscribe", conn.subscribe(&topic, group("g"))).await.expect("subscribe");
    publish_all(&*conn, &topic, [numbered("delay", 0)]).await;
    let (message, _, acker) = next_delivery(&mut sub, "first").await.into_parts();
    let delay = Duration::from_millis(800);
    let nacked = Instant::now();
    within("nack", acker.nack_after(Some(delay))).await.expect("nack");
    let again = next_delivery(&mut sub, "delayed redelivery").await;
    let elapsed = nacked.elapsed();
    assert_eq!(again.message().id(), message.id());
    // A little slack for clocks that are not the test's (a broker's timer).
    assert!(
        elapsed >= delay - Duration::from_millis(100),
        "redelivered after {elapsed:?}, asked for {delay:?}"
    );
    within("ack", again.ack()).await.expect("ack");
    close(&*conn).await;
}

async fn large_payloads_case(ctx: &Ctx) {
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let mut sub = within("subscribe", conn.subscribe(&topic, group("g"))).await.expect("subscribe");
    let n = ctx.count(2, 8);
    // 1 MiB, or the most a backend with a smaller limit (a broker's max message size) accepts.
    let size = ctx.features().max_payload.map_or(1024 * 1024, |max| max.min(1024 * 1024));
    if size < 1024 * 1024 {
        eprintln!(
            "conformance[{}] large_payloads: the backend takes at most {size} bytes",
            ctx.harness().name()
        );
    }
    let sent: Vec<Message> = (0..n)
        .map(|i| {
            let body: Vec<u8> = (0..size).map(|b| ((b * 31 + i * 7) % 251) as u8).collect();
            Message::new(body).with_header("n", i.to_string())
        })
        .collect();
    publish_all(&*conn, &topic, sent.clone()).await;
    let received = Received::new();
    for _ in 0..n {
        let delivery = next_delivery(&mut sub, "a 1 MiB delivery").await;
        let original = sent.iter().find(|m| m.id() == delivery.message().id()).expect("a sent id");
        assert_eq!(delivery.message().payload().len(), size);
        assert!(delivery.message().payload() == original.payload(), "1 MiB payload round-trips");
        received.record(&delivery.message().id().to_string());
        within("ack", delivery.ack()).await.expect("ack");
    }
    ctx.report("", n, &received, true);
    close(&*conn).await;
}

async fn oversized_payload_case(ctx: &Ctx) {
    let max = ctx.features().max_payload;
    if !ctx.needs("a declared max_payload", max.is_some()) {
        return;
    }
    let max = max.expect("declared");
    // (A backend whose limit is a database's 1 GB row is not worth allocating for.)
    if !ctx.needs("a max_payload of 64 MiB or less", max <= 64 * 1024 * 1024) {
        return;
    }
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let mut sub = within("subscribe", conn.subscribe(&topic, group("g"))).await.expect("subscribe");
    let over = Message::new(vec![7u8; max + 1]);
    let error = within("publish", conn.publish(&topic, over)).await.expect_err("a payload over max_payload");
    eprintln!("conformance[{}] oversized_payload_refused: {error}", ctx.harness().name());
    assert_eq!(error.kind(), ErrorKind::Config, "refused as a misfit, not a failure: {error}");
    assert!(error.is_permanent(), "resending cannot make it fit: {error}");
    let body: Vec<u8> = (0..max).map(|b| (b % 251) as u8).collect();
    let fits = Message::new(body);
    publish_all(&*conn, &topic, [fits.clone()]).await;
    let delivery = next_delivery(&mut sub, "the max_payload delivery").await;
    assert_eq!(delivery.message().id(), fits.id());
    assert!(delivery.message().payload() == fits.payload(), "a max_payload payload round-trips");
    within("ack", delivery.ack()).await.expect("ack");
    close(&*conn).await;
}

async fn metadata_case(ctx: &Ctx) {
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let mut sub = within("subscribe", conn.subscribe(&topic, group("g"))).await.expect("subscribe");
    let metadata = Metadata::builder()
        .with("emoji", "🦀 ✓ — ok")
        .with("ключ", "значение")
        .with("日本語", "テキスト")
        .with("empty", "")
        .with("spaces", "  a  b  ")
        .with("quote\"s", "line\nbreak\ttab \\ backslash")
        .build();
    let sent = [
        Message::new("unicode metadata").with_metadata(metadata.clone()),
        Message::new(Vec::<u8>::new()).with_header("empty-payload", "yes"),
        Message::new("no metadata"),
    ];
    publish_all(&*conn, &topic, sent.clone()).await;
    for _ in 0..sent.len() {
        let delivery = next_delivery(&mut sub, "metadata delivery").await;
        let original = sent.iter().find(|m| m.id() == delivery.message().id()).expect("a sent id");
        assert_eq!(delivery.message().payload(), original.payload());
        assert_eq!(sorted_metadata(delivery.message().metadata()), sorted_metadata(original.metadata()));
        within("ack", delivery.ack()).await.expect("ack");
    }
    close(&*conn).await;
}

async fn server_restart_case(ctx: &Ctx) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    if !ctx.needs("a server restart command", ctx.harness().can_restart()) {
        return;
    }
    let topic = ctx.topic();
    let consumer = ctx.connect().await;
    let publisher = ctx.connect().await;
    let sub = within("subscribe", consumer.subscribe(&topic, group("restart"))).await.expect("subscribe");
    let received = Received::new();
    let handle = spawn_consumer(sub, received.clone(), by_text, ack_all);
    // One publisher publishes without a pause, before, during and after the restart. A publish
    // that fails (the backend's own retries exhausted) is tried again until it is accepted (the
    // publisher's at-least-once): such failures, and duplicates, are reported.
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicUsize::new(0));
    let publishing = tokio::spawn({
        let (topic, publisher, stop, published) =
            (topic.clone(), publisher.clone(), stop.clone(), published.clone());
        async move {
            let mut failures = 0usize;
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                let message = numbered("rs", i);
                let deadline = Instant::now() + super::TIMEOUT;
                while let Err(error) = publisher.publish(&topic, message.clone()).await {
                    failures += 1;
                    assert!(
                        Instant::now() < deadline,
                        "publish {i} still failing after {:?}: {error:?}",
                        super::TIMEOUT
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                i += 1;
                published.store(i, Ordering::Release);
            }
            (i, failures)
        }
    });
    received.wait_unique(ctx.count(200, 2000), "messages flowing before the restart").await;
    within("server restart", ctx.harness().restart_server()).await.expect("restart the server");
    let at_restart = published.load(Ordering::Acquire);
    received.wait_unique(at_restart + ctx.count(300, 3000), "messages flowing after the restart").await;
    stop.store(true, Ordering::Release);
    let (n, failures) = within("publisher", publishing).await.expect("publisher");
    received.wait_unique(n, "every message across the restart").await;
    ctx.report(
        &format!("publishing under load; {failures} publish failures seen by the caller"),
        n,
        &received,
        false,
    );
    close(&*publisher).await;
    close(&*consumer).await;
    within("consumer ends", handle).await.expect("consumer");
}

/// Holds three deliveries at once (needs a backend that hands out several before a settle).
async fn acks_out_of_order_case(ctx: &Ctx) {
    let f = ctx.features();
    let possible = f.persistent && f.consumer_groups && f.redelivery && !f.strict_order;
    if !ctx.needs("persistence, groups and several unsettled deliveries at once", possible) {
        return;
    }
    let topic = ctx.topic();
    let options = group("out-of-order");
    {
        let conn = ctx.connect().await;
        drop(within("subscribe", conn.subscribe(&topic, options.clone())).await.expect("create the group"));
        publish_all(&*conn, &topic, (1..=3).map(|i| numbered("o", i))).await;
        let mut sub = within("subscribe", conn.subscribe(&topic, options.clone())).await.expect("subscribe");
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(next_delivery(&mut sub, "three deliveries held at once").await);
        }
        held.sort_by_key(|d| text(d.message()));
        let third = held.pop().expect("three");
        let second = held.pop().expect("two");
        let first = held.pop().expect("one");
        assert_eq!(text(first.message()), "o:1");
        within("ack the third", third.ack()).await.expect("ack");
        within("ack the second", second.ack()).await.expect("ack");
        let (_, _, acker) = first.into_parts();
        std::mem::forget(acker); // unsettled, as a crash leaves it
        drop(sub);
        close(&*conn).await;
    }
    let conn = ctx.connect().await;
    let sub = within("subscribe", conn.subscribe(&topic, options)).await.expect("subscribe");
    let received = Received::new();
    let handle = spawn_consumer(sub, received.clone(), by_text, ack_all);
    received.wait_unique(1, "the unsettled first message again").await;
    tokio::time::sleep(QUIET).await;
    assert!(received.contains("o:1"), "the unsettled message comes back: {:?}", received.order());
    match f.settlement {
        crate::pubsub::Settlement::Individual => assert!(
            !received.contains("o:2") && !received.contains("o:3"),
            "acked messages do not come back when acks are individual: {:?}",
            received.order()
        ),
        // A cumulative backend could only commit up to the unsettled first: 2 and 3 may return.
        crate::pubsub::Settlement::Cumulative => {}
    }
    ctx.report(&format!("{:?} settlement", f.settlement), 1, &received, false);
    close(&*conn).await;
    within("consumer ends", handle).await.expect("consumer");
}

async fn keyed_order_case(ctx: &Ctx) {
    let f = ctx.features();
    if !ctx.needs("order per key across a group's subscriptions", f.ordered_per_key && f.consumer_groups) {
        return;
    }
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let options = group("keyed");
    let received = Received::new();
    let mut handles = Vec::new();
    for _ in 0..3 {
        let sub = within("subscribe", conn.subscribe(&topic, options.clone())).await.expect("subscribe");
        handles.push(spawn_consumer(sub, received.clone(), by_text, ack_all));
    }
    let per_key = ctx.count(20, 333);
    let keys = ["alpha", "beta", "gamma"];
    let mut messages = Vec::with_capacity(keys.len() * per_key);
    for seq in 0..per_key {
        for key in keys {
            messages.push(Message::new(format!("{key}:{seq}")).with_key(key));
        }
    }
    publish_all(&*conn, &topic, messages).await;
    received.wait_unique(keys.len() * per_key, "every keyed message").await;
    let mut next_expected: HashMap<String, usize> = HashMap::new();
    for entry in received.order() {
        let (key, seq) = entry.split_once(':').expect("key:seq");
        let seq: usize = seq.parse().expect("seq");
        let expected = next_expected.entry(key.to_owned()).or_insert(0);
        assert!(seq <= *expected, "key {key}: {seq} arrived before {expected}");
        if seq == *expected {
            *expected += 1;
        }
    }
    ctx.report("3 subscriptions", keys.len() * per_key, &received, true);
    close(&*conn).await;
    for handle in handles {
        within("consumer ends", handle).await.expect("consumer");
    }
}

async fn attempts_counted_case(ctx: &Ctx) {
    let f = ctx.features();
    if !ctx.needs(
        "redelivery with counted attempts",
        f.redelivery && f.attempts != crate::pubsub::Attempts::Unknown,
    ) {
        return;
    }
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let mut sub = within("subscribe", conn.subscribe(&topic, group("attempts"))).await.expect("subscribe");
    publish_all(&*conn, &topic, [numbered("a", 1)]).await;
    let mut seen = Vec::new();
    for round in 1..=3 {
        let delivery = next_delivery(&mut sub, "a delivery of the nacked message").await;
        seen.push(delivery.attempt());
        if round < 3 {
            within("nack", delivery.nack()).await.expect("nack");
        } else {
            within("ack", delivery.ack()).await.expect("ack");
        }
    }
    match f.attempts {
        crate::pubsub::Attempts::Exact => assert_eq!(seen, [1, 2, 3], "exact attempts"),
        _ => assert!(seen[2] >= 2 && seen.windows(2).all(|w| w[0] <= w[1]), "at least: {seen:?}"),
    }
    close(&*conn).await;
}

async fn reject_case(ctx: &Ctx) {
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let mut sub = within("subscribe", conn.subscribe(&topic, group("reject"))).await.expect("subscribe");
    publish_all(&*conn, &topic, [numbered("r", 1)]).await;
    let first = next_delivery(&mut sub, "the message to reject").await;
    assert_eq!(text(first.message()), "r:1");
    within("reject", first.reject("no use retrying")).await.expect("reject");
    publish_all(&*conn, &topic, [numbered("r", 2)]).await;
    let next = next_delivery(&mut sub, "the next message").await;
    assert_eq!(text(next.message()), "r:2", "a rejected message is not delivered again");
    within("ack", next.ack()).await.expect("ack");
    let quiet = tokio::time::timeout(QUIET, sub.next()).await;
    assert!(
        !matches!(&quiet, Ok(Some(Ok(d))) if text(d.message()) == "r:1"),
        "the rejected message came back"
    );
    close(&*conn).await;
}

async fn release_case(ctx: &Ctx) {
    let f = ctx.features();
    if !ctx.needs("redelivery", f.redelivery) {
        return;
    }
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let mut sub = within("subscribe", conn.subscribe(&topic, group("release"))).await.expect("subscribe");
    publish_all(&*conn, &topic, [numbered("l", 1)]).await;
    let first = next_delivery(&mut sub, "the message to release").await;
    let (id, attempt) = (first.message().id(), first.attempt());
    within("release", first.release()).await.expect("release");
    let again = next_delivery(&mut sub, "the released message again").await;
    assert_eq!(again.message().id(), id, "a released message comes back");
    if f.release_uncounted {
        assert_eq!(again.attempt(), attempt, "release counts no attempt on this backend");
    } else {
        assert!(again.attempt() >= attempt);
    }
    within("ack", again.ack()).await.expect("ack");
    close(&*conn).await;
}

async fn groupless_case(ctx: &Ctx) {
    let f = ctx.features();
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    if f.refuses_unroutable {
        // Nothing receives the topic yet: the backend must say so instead of dropping them.
        for i in 0..2 {
            let result = within("publish", conn.publish(&topic, numbered("before", i))).await;
            assert!(result.is_err(), "a publish that nothing receives must fail on this backend");
        }
    } else {
        publish_all(&*conn, &topic, (0..2).map(|i| numbered("before", i))).await;
    }
    let sub =
        within("subscribe", conn.subscribe(&topic, SubscribeOptions::default())).await.expect("subscribe");
    let received = Received::new();
    let handle = spawn_consumer(sub, received.clone(), by_text, ack_all);
    let n = ctx.count(5, 100);
    publish_all(&*conn, &topic, (0..n).map(|i| numbered("after", i))).await;
    within("every message published after the subscription", async {
        while (0..n).any(|i| !received.contains(&format!("after:{i}"))) {
            let notified = received.changed.notified();
            if (0..n).all(|i| received.contains(&format!("after:{i}"))) {
                break;
            }
            notified.await;
        }
    })
    .await;
    if !f.history {
        assert!(
            !received.contains("before:0") && !received.contains("before:1"),
            "a subscription without a group and without history starts with what follows it: {:?}",
            received.order()
        );
    }
    ctx.report("", n, &received, false);
    close(&*conn).await;
    within("consumer ends", handle).await.expect("consumer");
}

async fn join_group_case(ctx: &Ctx) {
    if !ctx.needs("consumer groups", ctx.features().consumer_groups) {
        return;
    }
    let conn = ctx.connect().await;
    let topic = ctx.topic();
    let options = group("join");
    let received = Received::new();
    let first = within("subscribe", conn.subscribe(&topic, options.clone())).await.expect("subscribe");
    let mut handles = vec![spawn_consumer(first, received.clone(), by_text, ack_all)];
    let n = ctx.count(200, 4000);
    let publisher = {
        let topic = topic.clone();
        let conn = ctx.connect().await;
        tokio::spawn(async move {
            publish_all(&*conn, &topic, (0..n).map(|i| numbered("j", i))).await;
            close(&*conn).await;
        })
    };
    received.wait_unique(n / 4, "the first quarter, to one consumer").await;
    let second = within("subscribe", conn.subscribe(&topic, options)).await.expect("a second member joins");
    handles.push(spawn_consumer(second, received.clone(), by_text, ack_all));
    within("publisher", publisher).await.expect("publisher");
    received.wait_unique(n, "every message, across the join").await;
    ctx.report("2 members, one joining mid-stream", n, &received, false);
    close(&*conn).await;
    for handle in handles {
        within("consumer ends", handle).await.expect("consumer");
    }
}

async fn slow_handler_case(ctx: &Ctx) {
    let f = ctx.features();
    let Some(deadline) = ctx.harness().ack_deadline() else {
        ctx.needs("an ack deadline (Harness::ack_deadline)", false);
        return;
    };
    if !ctx.needs("redelivery with consumer groups", f.redelivery && f.consumer_groups) {
        return;
    }
    let conn = ctx.connect().await;
    let other = ctx.connect().await;
    let topic = ctx.topic();
    let options = group("slow");
    let mut slow = within("subscribe", conn.subscribe(&topic, options.clone())).await.expect("subscribe");
    publish_all(&*conn, &topic, [numbered("s", 1)]).await;
    let held = next_delivery(&mut slow, "the delivery a slow handler holds").await;
    let id = held.message().id();
    // A second member of the group, on another connection. The slow handler takes longer than
    // the deadline: the backend gives the message out again, to either member.
    let mut fast = within("subscribe", other.subscribe(&topic, options)).await.expect("subscribe");
    let again = tokio::select! {
        delivery = next_delivery(&mut slow, "the message again after the ack deadline") => delivery,
        delivery = next_delivery(&mut fast, "the message again after the ack deadline") => delivery,
    };
    assert_eq!(again.message().id(), id, "the held message comes back after {deadline:?}");
    // The slow handler finishes at last: its late ack is reported or ignored, never fatal.
    if let Err(error) = within("the late ack", held.ack()).await {
        eprintln!(
            "conformance[{}] slow_handler_past_the_deadline: late ack reported: {error}",
            ctx.harness().name()
        );
    }
    within("ack the redelivery", again.ack()).await.expect("ack");
    publish_all(&*conn, &topic, [numbered("s", 2)]).await;
    let next = tokio::select! {
        delivery = next_delivery(&mut slow, "the group goes on") => delivery,
        delivery = next_delivery(&mut fast, "the group goes on") => delivery,
    };
    assert_eq!(text(next.message()), "s:2");
    within("ack", next.ack()).await.expect("ack");
    close(&*other).await;
    close(&*conn).await;
}

async fn forced_close_case(ctx: &Ctx) {
    use crate::{App, Route, RouterConfig};

    let f = ctx.features();
    // A group outlives its subscriptions only where the backend persists it.
    if !ctx.needs("persistence with consumer groups", f.persistent && f.consumer_groups) {
        return;
    }
    let topic = ctx.topic();
    // "At once": well before a lease runs out (where the backend has one), and within a few
    // seconds anyway.
    let at_once = match ctx.harness().ack_deadline() {
        None => Duration::from_secs(5),
        Some(deadline) if ctx.harness().release_on_drop_is_immediate() => {
            (deadline / 2).min(Duration::from_secs(5))
        }
        // Back after the deadline at worst (see `Harness::release_on_drop_is_immediate`).
        Some(deadline) => deadline + Duration::from_secs(3),
    };
    let publisher = ctx.connect().await;
    // The router's group, which the next consumer joins.
    let forced = format!("forced-{}", unique());
    for round in 0..ctx.count(3, 7) {
        let conn = ctx.connect().await;
        let entered = Arc::new(tokio::sync::Notify::new());
        let handler = {
            let entered = entered.clone();
            move |_: Message| {
                let entered = entered.clone();
                async move {
                    entered.notify_one();
                    std::future::pending::<()>().await;
                }
            }
        };
        let router = App::new()
            .pubsub_parts(conn.clone(), conn.clone())
            .config(RouterConfig::default().close_timeout(Duration::from_millis(100)))
            .route(Route::new("forced", topic.clone(), handler).group(forced.clone()))
            .build()
            .expect("a router with one handler");
        within("router starts", router.start()).await.expect("start");
        if round == 0 {
            // After the group's first subscription: backends without history keep it for the group.
            publish_all(&*publisher, &topic, [numbered("forced", 1)]).await;
        }
        within(&format!("round {round}: the handler holds the message"), entered.notified()).await;
        let closed = within("forced close", router.close()).await;
        assert_eq!(
            closed.expect_err("the handler never finishes: close times out").kind(),
            ErrorKind::Timeout
        );
        drop(router);
        let conn = ctx.connect().await;
        let options = SubscribeOptions::group(forced.clone());
        let mut sub = within("subscribe", conn.subscribe(&topic, options)).await.expect("subscribe");
        let started = Instant::now();
        let back = tokio::time::timeout(at_once, next_delivery(&mut sub, "the aborted delivery"))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "round {round}: the aborted delivery did not come back within {at_once:?} of the close"
                )
            });
        assert_eq!(text(back.message()), "forced:1");
        eprintln!(
            "conformance[{}] forced_close_gives_back_at_once: round {round} back after {:?}",
            ctx.harness().name(),
            started.elapsed()
        );
        within("release for the next round", back.release()).await.expect("release");
        drop(sub);
        close(&*conn).await;
    }
    // Finally consumed, so the topic ends empty.
    let conn = ctx.connect().await;
    let mut sub = within("subscribe", conn.subscribe(&topic, SubscribeOptions::group(forced)))
        .await
        .expect("subscribe");
    let last = next_delivery(&mut sub, "the message after the forced closes").await;
    within("ack", last.ack()).await.expect("ack");
    close(&*conn).await;
    close(&*publisher).await;
}
