//! `MemoryPubSub`: fan-out, consumer groups, redelivery, backpressure, history, close.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{eventually, take, topic, within};
use millstream::pubsub::Features;
use millstream::{MemoryPubSub, Message, Publisher, SubscribeOptions, Subscriber, Subscription};

fn msg(n: usize) -> Message {
    Message::new(format!("m{n}"))
}

async fn next_text(sub: &mut Subscription) -> (String, u32, millstream::Delivery) {
    let d = within("delivery", sub.next()).await.expect("open").expect("ok");
    (String::from_utf8(d.message().payload().to_vec()).unwrap(), d.attempt(), d)
}

#[tokio::test]
async fn every_subscription_without_a_group_gets_every_message() {
    let ps = MemoryPubSub::new();
    let t = topic("fanout");
    let mut a = ps.subscribe(&t, SubscribeOptions::default()).await.unwrap();
    let mut b = ps.subscribe(&t, SubscribeOptions::default()).await.unwrap();
    for n in 0..3 {
        ps.publish(&t, msg(n)).await.unwrap();
    }
    assert_eq!(take(&mut a, 3).await, ["m0", "m1", "m2"]);
    assert_eq!(take(&mut b, 3).await, ["m0", "m1", "m2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_delivery_per_group_and_every_group_gets_all() {
    let ps = MemoryPubSub::new();
    let t = topic("groups");
    let total = 1000;
    let mut handles = Vec::new();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<(String, String)>::new()));
    for (group, subs) in [("g1", 2), ("g2", 1)] {
        for _ in 0..subs {
            let mut sub = ps.subscribe(&t, SubscribeOptions::group(group)).await.unwrap();
            let seen = seen.clone();
            handles.push(tokio::spawn(async move {
                while let Some(Ok(d)) = sub.next().await {
                    let text = String::from_utf8(d.message().payload().to_vec()).unwrap();
                    seen.lock().push((group.to_owned(), text));
                    d.ack().await.unwrap();
                }
            }));
        }
    }
    for n in 0..total {
        ps.publish(&t, msg(n)).await.unwrap();
    }
    eventually("all delivered", || seen.lock().len() >= 2 * total).await;
    Publisher::close(&ps).await.unwrap();
    for h in handles {
        within("subscriber ends", h).await.unwrap();
    }
    let seen = seen.lock();
    assert_eq!(seen.len(), 2 * total, "no duplicates");
    for group in ["g1", "g2"] {
        let got: HashSet<_> = seen.iter().filter(|(g, _)| g == group).map(|(_, m)| m.clone()).collect();
        assert_eq!(got.len(), total, "group {group} got every message once");
    }
}

#[tokio::test]
async fn nack_redelivers_with_a_higher_attempt_and_drop_with_the_same() {
    let ps = MemoryPubSub::new();
    let t = topic("nack");
    let mut sub = ps.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    ps.publish(&t, msg(1)).await.unwrap();
    ps.publish(&t, msg(2)).await.unwrap();

    let (text, attempt, d) = next_text(&mut sub).await;
    assert_eq!((text.as_str(), attempt), ("m1", 1));
    d.nack().await.unwrap();
    let (text, attempt, d) = next_text(&mut sub).await;
    assert_eq!((text.as_str(), attempt), ("m1", 2), "a nacked message comes back first");
    drop(d); // neither acked nor nacked
    let (text, attempt, d) = next_text(&mut sub).await;
    assert_eq!((text.as_str(), attempt), ("m1", 2), "a dropped delivery is released: same attempt");
    d.ack().await.unwrap();
    let (text, attempt, d) = next_text(&mut sub).await;
    assert_eq!((text.as_str(), attempt), ("m2", 1));
    d.ack().await.unwrap();
    assert_eq!(ps.queued(&t), 0);
}

#[tokio::test(start_paused = true)]
async fn nack_with_delay_redelivers_after_the_delay() {
    let ps = MemoryPubSub::new();
    let t = topic("delay");
    let mut sub = ps.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    ps.publish(&t, msg(1)).await.unwrap();
    let (message, _, acker) = within("first", sub.next()).await.unwrap().unwrap().into_parts();
    let started = tokio::time::Instant::now();
    acker.nack_after(Some(Duration::from_secs(5))).await.unwrap();
    assert_eq!(ps.queued(&t), 0, "not back before the delay");
    let (text, attempt, d) = next_text(&mut sub).await;
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert_eq!((text.as_str(), attempt), ("m1", 2));
    assert_eq!(d.message().id(), message.id());
    d.ack().await.unwrap();
}

/// Publishes `m0..m{count}` to `t` from a task of its own, counting the publishes that returned.
fn publish_counting(
    ps: &MemoryPubSub,
    t: &str,
    count: usize,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
    let published = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn({
        let (ps, t, published) = (ps.clone(), t.to_owned(), published.clone());
        async move {
            for n in 0..count {
                ps.publish(&t, msg(n)).await.unwrap();
                published.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (producer, published)
}

/// Waits until [`publish_counting`]'s producer has published `count` messages, then checks that
/// it stays there while others run (it waits for room).
async fn producer_waits_at(published: &AtomicUsize, count: usize) {
    eventually("the producer gets that far", || published.load(Ordering::SeqCst) >= count).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(published.load(Ordering::SeqCst), count, "the producer waits there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_group_makes_publishers_wait() {
    let ps = MemoryPubSub::new().capacity(8);
    let t = topic("backpressure");
    let mut sub = ps.subscribe(&t, SubscribeOptions::group("slow")).await.unwrap();
    let (producer, published) = publish_counting(&ps, &t, 100);
    // The producer fills the queue and then waits: it cannot get past the capacity.
    producer_waits_at(&published, 8).await;
    assert_eq!(ps.queued(&t), 8);
    assert!(!producer.is_finished());
    // Consuming lets it go on; order is kept.
    let got = take(&mut sub, 100).await;
    assert_eq!(got, (0..100).map(|n| format!("m{n}")).collect::<Vec<_>>());
    within("producer done", producer).await.unwrap();
}

/// The bound has hysteresis: publishers wait while the group holds its capacity and go on once
/// half of it is taken (not at every message taken); a nacked message counts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_go_on_once_half_the_queue_is_taken() {
    let ps = MemoryPubSub::new().capacity(8);
    let t = topic("half");
    let mut sub = ps.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    let (producer, published) = publish_counting(&ps, &t, 100);
    producer_waits_at(&published, 8).await;
    // Three taken: five wait, more than half the capacity; the producer still waits.
    assert_eq!(take(&mut sub, 3).await, ["m0", "m1", "m2"]);
    producer_waits_at(&published, 8).await;
    assert_eq!(ps.queued(&t), 5);
    // The fourth brings the queue down to half: the producer fills it again.
    assert_eq!(take(&mut sub, 1).await, ["m3"]);
    producer_waits_at(&published, 12).await;
    assert_eq!(ps.queued(&t), 8);
    // A nacked message comes back first and counts again: four more must be taken.
    let (text, _, d) = next_text(&mut sub).await;
    assert_eq!(text, "m4");
    d.nack().await.unwrap();
    assert_eq!(ps.queued(&t), 8);
    let (text, attempt, d) = next_text(&mut sub).await;
    assert_eq!((text.as_str(), attempt), ("m4", 2));
    d.ack().await.unwrap();
    assert_eq!(take(&mut sub, 2).await, ["m5", "m6"]);
    producer_waits_at(&published, 12).await;
    assert_eq!(take(&mut sub, 1).await, ["m7"]);
    producer_waits_at(&published, 16).await;
    let rest = take(&mut sub, 92).await;
    assert_eq!(rest, (8..100).map(|n| format!("m{n}")).collect::<Vec<_>>());
    within("producer done", producer).await.unwrap();
}

/// Three publishers and three subscriptions of one group through a queue of 4, on two threads,
/// every fifth delivery nacked once: every message is acked exactly once, each publisher's
/// messages arrive in order the first time, and nothing is left queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_publishers_and_subscriptions_lose_nothing_through_a_small_queue() {
    let ps = MemoryPubSub::new().capacity(4);
    let t = topic("competing");
    let per_publisher = 3_000;
    let acked = Arc::new(parking_lot::Mutex::new(Vec::<(usize, usize)>::new()));
    let mut subscriptions = Vec::new();
    for _ in 0..3 {
        let mut sub = ps.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
        let acked = acked.clone();
        subscriptions.push(tokio::spawn(async move {
            let mut first_seen: Vec<Option<usize>> = vec![None; 3];
            while let Some(Ok(d)) = sub.next().await {
                let text = String::from_utf8(d.message().payload().to_vec()).unwrap();
                let (from, n) = text.split_once('-').unwrap();
                let (from, n): (usize, usize) = (from.parse().unwrap(), n.parse().unwrap());
                if d.attempt() == 1 {
                    if let Some(last) = first_seen[from] {
                        assert!(n > last, "publisher {from}: {n} after {last}");
                    }
                    first_seen[from] = Some(n);
                }
                if n % 5 == 0 && d.attempt() == 1 {
                    d.nack().await.unwrap();
                } else {
                    acked.lock().push((from, n));
                    d.ack().await.unwrap();
                }
            }
        }));
    }
    let publishers: Vec<_> = (0..3)
        .map(|from| {
            let (ps, t) = (ps.clone(), t.clone());
            tokio::spawn(async move {
                for n in 0..per_publisher {
                    ps.publish(&t, Message::new(format!("{from}-{n}"))).await.unwrap();
                }
            })
        })
        .collect();
    for publisher in publishers {
        within("publisher done", publisher).await.unwrap();
    }
    eventually("all acked", || acked.lock().len() >= 3 * per_publisher).await;
    assert_eq!(ps.queued(&t), 0);
    Publisher::close(&ps).await.unwrap();
    for sub in subscriptions {
        within("subscription ends", sub).await.unwrap();
    }
    let mut acked = std::mem::take(&mut *acked.lock());
    acked.sort_unstable();
    let expected: Vec<_> = (0..3).flat_map(|from| (0..per_publisher).map(move |n| (from, n))).collect();
    assert_eq!(acked, expected, "each message acked exactly once");
}

/// A slow consumer: 20 000 messages of 4 KiB (80 MiB in all) through a queue of 64. What waits in
/// memory never exceeds the capacity (256 KiB of payload), however far behind the consumer is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_keeps_memory_bounded() {
    let capacity = 64;
    let ps = MemoryPubSub::new().capacity(capacity);
    let t = topic("slow");
    let mut sub = ps.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    let total = 20_000;
    let producer = tokio::spawn({
        let (ps, t) = (ps.clone(), t.clone());
        async move {
            let payload = vec![b'x'; 4096];
            for n in 0..total {
                let mut body = payload.clone();
                body[..8].copy_from_slice(&(n as u64).to_le_bytes());
                ps.publish(&t, Message::new(body)).await.unwrap();
            }
        }
    });
    // The producer runs ahead until the queue is full, and no further.
    eventually("queue full", || ps.queued(&t) >= capacity).await;
    let mut max_queued = 0;
    for n in 0..total {
        if n % 97 == 0 {
            // Slow: let the producer run ahead as far as it can.
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
        }
        max_queued = max_queued.max(ps.queued(&t));
        let d = within("delivery", sub.next()).await.unwrap().unwrap();
        let id = u64::from_le_bytes(d.message().payload()[..8].try_into().unwrap());
        assert_eq!(id, n as u64, "in order, nothing lost");
        d.ack().await.unwrap();
    }
    within("producer done", producer).await.unwrap();
    assert!(max_queued <= capacity, "queued {max_queued} > capacity {capacity}");
}

#[tokio::test]
async fn retained_history_is_replayed_to_late_subscribers() {
    let ps = MemoryPubSub::new().retain(3);
    assert!(Subscriber::features(&ps).history);
    let t = topic("history");
    for n in 0..5 {
        ps.publish(&t, msg(n)).await.unwrap();
    }
    let mut late = ps.subscribe(&t, SubscribeOptions::default()).await.unwrap();
    ps.publish(&t, msg(5)).await.unwrap();
    assert_eq!(take(&mut late, 4).await, ["m2", "m3", "m4", "m5"]);

    let without = MemoryPubSub::new();
    assert!(!Subscriber::features(&without).history);
    without.publish(&t, msg(0)).await.unwrap();
    assert_eq!(without.queued(&t), 0, "no subscriber, no history: dropped");
}

#[tokio::test]
async fn a_named_group_keeps_its_messages_between_subscriptions() {
    let ps = MemoryPubSub::new();
    let t = topic("durable-group");
    let sub = ps.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    drop(sub);
    ps.publish(&t, msg(1)).await.unwrap();
    let mut again = ps.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    // An unacked delivery of a closed subscription goes to the next one.
    let (_, _, d) = next_text(&mut again).await;
    drop(again);
    drop(d);
    let mut third = ps.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    let (text, attempt, d) = next_text(&mut third).await;
    assert_eq!((text.as_str(), attempt), ("m1", 1), "released, not counted");
    d.ack().await.unwrap();
}

#[tokio::test]
async fn a_private_subscription_dies_with_its_stream() {
    let ps = MemoryPubSub::new().capacity(1);
    let t = topic("private");
    let sub = ps.subscribe(&t, SubscribeOptions::default()).await.unwrap();
    drop(sub);
    // Nobody listens any more: publishing never waits on the departed subscription.
    for n in 0..10 {
        within("publish", ps.publish(&t, msg(n))).await.unwrap();
    }
    assert_eq!(ps.queued(&t), 0);
}

#[tokio::test]
async fn close_ends_streams_and_refuses_publishes() {
    let ps = MemoryPubSub::new();
    let t = topic("close");
    let mut sub = ps.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    let reader = tokio::spawn(async move { sub.next().await.is_none() });
    tokio::task::yield_now().await;
    Subscriber::close(&ps).await.unwrap();
    assert!(within("stream ends", reader).await.unwrap());
    let err = ps.publish(&t, msg(0)).await.unwrap_err();
    assert_eq!(err.kind(), millstream::ErrorKind::Closed);
    assert!(ps.subscribe(&t, SubscribeOptions::default()).await.is_err());
}

#[tokio::test]
async fn features_are_declared() {
    let f: Features = Subscriber::features(&MemoryPubSub::new());
    assert!(f.consumer_groups && f.ordered && f.redelivery);
    assert!(!f.persistent);
}

#[tokio::test]
async fn metadata_and_id_survive_the_trip() {
    let ps = MemoryPubSub::new();
    let t = topic("meta");
    let mut sub = ps.subscribe(&t, SubscribeOptions::default()).await.unwrap();
    let sent = Message::new("x").with_header("ключ", "значение").with_header("empty", "");
    ps.publish(&t, sent.clone()).await.unwrap();
    let (_, _, d) = next_text(&mut sub).await;
    assert_eq!(d.message(), &sent);
    d.ack().await.unwrap();
}

/// A subscription that joins a group while messages wait gets its share of them, in order, and
/// the rest once the first subscription ends (a backend that prefetched for the first must give
/// them back).
#[tokio::test]
async fn a_subscription_that_joins_shares_what_waits() {
    let ps = MemoryPubSub::new();
    let t = topic("join");
    let mut first = ps.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    for n in 0..5 {
        ps.publish(&t, msg(n)).await.unwrap();
    }
    let (text, _, d0) = next_text(&mut first).await;
    assert_eq!(text, "m0");
    let mut second = ps.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    let (text, _, d1) = next_text(&mut first).await;
    assert_eq!(text, "m1");
    let (text, _, d2) = next_text(&mut second).await;
    assert_eq!(text, "m2", "the second subscription gets its share of what waits, in order");
    for d in [d0, d1, d2] {
        d.ack().await.unwrap();
    }
    assert_eq!(ps.queued(&t), 2);
    drop(first);
    let got: Vec<String> = take(&mut second, 2).await;
    assert_eq!(got, ["m3", "m4"]);
    assert_eq!(ps.queued(&t), 0);
}

/// What a named group's subscription had not been given when it ended waits for the group's next
/// subscription, in order, and counts as queued meanwhile.
#[tokio::test]
async fn what_a_subscription_was_not_given_waits_for_the_next() {
    let ps = MemoryPubSub::new();
    let t = topic("run-back");
    let mut first = ps.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    for n in 0..10 {
        ps.publish(&t, msg(n)).await.unwrap();
    }
    let (text, _, d) = next_text(&mut first).await;
    assert_eq!(text, "m0");
    d.ack().await.unwrap();
    assert_eq!(ps.queued(&t), 9);
    drop(first);
    let mut next = ps.subscribe(&t, SubscribeOptions::group("g")).await.unwrap();
    let got: Vec<String> = take(&mut next, 9).await;
    assert_eq!(got, (1..10).map(|n| format!("m{n}")).collect::<Vec<_>>());
}
