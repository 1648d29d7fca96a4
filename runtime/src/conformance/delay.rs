//! The contract every [`DelayStore`] keeps, as one check each store's tests run against its real
//! server: [`check_delay_store`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::store::{DelayStore, DelayedMessage};

fn expect(condition: bool, what: impl FnOnce() -> String) -> Result<()> {
    if condition {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Backend, format!("delay store contract: {}", what())))
    }
}

fn delayed(topic: &str, due_ms: u64, text: &str) -> DelayedMessage {
    let message = Message::new(text.to_owned()).with_key(format!("key-{text}")).with_header("h", text);
    DelayedMessage { topic: topic.to_owned(), message, due_ms }
}

/// Checks `store` against the [`DelayStore`] contract; `scope` keeps this run's messages apart
/// from other runs on the same server (use a unique one per test). Times are synthetic (a base
/// far in the past plus offsets), so the check never waits for a clock:
///
/// - nothing is taken before it is due; due messages come earliest due first, in scheduling
///   order among equal due times, at most `limit` at a time;
/// - a message comes back whole: topic, id, key, metadata, payload, due time;
/// - a taken message is not taken again while its lease runs, and is again once it has run out;
/// - `done` forgets messages; `next_due` and `count` follow;
/// - scopes are independent;
/// - of concurrent takers, each message goes to exactly one.
pub async fn check_delay_store(store: Arc<dyn DelayStore>, scope: &str) -> Result<()> {
    let other = format!("{scope}-other");
    let lease = Duration::from_secs(60);
    let base = 1_000_000_000u64;
    expect(store.next_due(scope).await?.is_none(), || "a new scope has a next due time".into())?;
    expect(store.count(scope).await? == 0, || "a new scope holds messages".into())?;

    // Scheduled out of order, two with the same due time (scheduling order decides those).
    let batch = vec![
        delayed("t.b", base + 30, "third"),
        delayed("t.a", base + 10, "first"),
        delayed("t.a", base + 30, "fourth"),
    ];
    let sent: Vec<Message> = batch.iter().map(|d| d.message.clone()).collect();
    store.schedule(scope, batch).await?;
    store.schedule(scope, vec![delayed("t.c", base + 20, "second")]).await?;
    store.schedule(&other, vec![delayed("t.z", base, "elsewhere")]).await?;
    expect(store.count(scope).await? == 4, || "count after scheduling 4".into())?;
    let next = store.next_due(scope).await?;
    expect(next == Some(base + 10), || format!("next due {next:?}, not {}", base + 10))?;

    let early = store.take_due(scope, base + 9, 10, lease).await?;
    expect(early.is_empty(), || format!("{} messages taken before they were due", early.len()))?;

    let first = store.take_due(scope, base + 25, 10, lease).await?;
    let texts = |taken: &[crate::store::TakenMessage]| {
        taken
            .iter()
            .map(|t| String::from_utf8_lossy(t.delayed.message.payload()).into_owned())
            .collect::<Vec<_>>()
    };
    expect(texts(&first) == ["first", "second"], || {
        format!("due at +25: {:?}, not [first, second]", texts(&first))
    })?;
    let got = &first[0];
    expect(
        got.delayed.topic == "t.a" && got.delayed.due_ms == base + 10 && got.delayed.message == sent[1],
        || format!("a message did not come back whole: {:?}", got.delayed),
    )?;
    expect(got.delayed.message.key() == Some("key-first"), || "the key was lost".into())?;

    let rest = store.take_due(scope, base + 40, 1, lease).await?;
    expect(texts(&rest) == ["third"], || format!("limit 1 at +40: {:?}, not [third]", texts(&rest)))?;
    let rest2 = store.take_due(scope, base + 40, 10, lease).await?;
    expect(texts(&rest2) == ["fourth"], || {
        format!("at +40 again: {:?}, not [fourth] (leased ones came back?)", texts(&rest2))
    })?;

    // Leases: nothing comes back while they run; all four after they end.
    let leased = store.take_due(scope, base + 1_000, 10, lease).await?;
    expect(leased.is_empty(), || format!("{} leased messages taken again within their lease", leased.len()))?;
    let after = base + 100 + lease.as_millis() as u64;
    let again = store.take_due(scope, after, 10, Duration::from_millis(100)).await?;
    expect(again.len() == 4, || format!("{} of 4 messages came back after their lease", again.len()))?;

    let seqs: Vec<u64> = again.iter().map(|t| t.seq).collect();
    store.done(scope, &seqs[..3]).await?;
    expect(store.count(scope).await? == 1, || "count after done of 3 of 4".into())?;
    store.done(scope, &seqs[3..]).await?;
    store.done(scope, &[u64::MAX - 1]).await?;
    expect(store.count(scope).await? == 0, || "count after done of all".into())?;
    expect(store.next_due(scope).await?.is_none(), || "next due with nothing held".into())?;

    let elsewhere = store.take_due(&other, base, 10, lease).await?;
    expect(texts(&elsewhere) == ["elsewhere"], || "the other scope's message".into())?;
    store.done(&other, &[elsewhere[0].seq]).await?;

    // Concurrent takers share 40 due messages: each goes to exactly one.
    let many: Vec<DelayedMessage> = (0..40).map(|i| delayed("t.many", base + i, &format!("m{i}"))).collect();
    store.schedule(scope, many).await?;
    let takers = (0..4).map(|_| {
        let store = store.clone();
        let scope = scope.to_owned();
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let taken = store.take_due(&scope, base + 1_000, 3, lease).await?;
                if taken.is_empty() {
                    return Ok::<_, Error>(got);
                }
                got.extend(taken.into_iter().map(|t| t.seq));
            }
        })
    });
    let mut all = Vec::new();
    for taker in takers.collect::<Vec<_>>() {
        all.extend(taker.await.map_err(|e| Error::new(ErrorKind::Backend, e.to_string()))??);
    }
    let distinct: HashSet<u64> = all.iter().copied().collect();
    expect(all.len() == 40 && distinct.len() == 40, || {
        format!("4 concurrent takers took {} messages, {} distinct, of 40", all.len(), distinct.len())
    })?;
    store.done(scope, &all).await?;
    expect(store.count(scope).await? == 0, || "count after the concurrent takers".into())?;
    Ok(())
}
