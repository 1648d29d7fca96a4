//! The subscribing half of [`SqlPubSub`]: a subscription ([`SqlStream`]) claims its group's lease,
//! reads a batch and hands it out one message at a time; its ackers ([`SqlAcker`]) settle each
//! delivery on the group's row.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_core::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::db::{is_transient, millis, now_ms};
use super::ops::dispatch;
use super::pubsub::{Inner, Lease, SqlPubSub};
use super::stored::Row;
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::pubsub::{
    closed_error, AckSink, Acker, Attempts, Delivery, Features, OpFuture, Settle, Settlement,
    SubscribeOptions, Subscriber, Subscription, Token,
};

impl Subscriber for SqlPubSub {
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription> {
        if self.inner.subscriber_closed.load(Ordering::Acquire) {
            return OpFuture::ready(Err(closed_error("SQL subscriber is closed")));
        }
        OpFuture::boxed(async move {
            self.ensure_schema().await?;
            self.check_layout(topic).await?;
            let id = uuid::Uuid::now_v7().simple().to_string();
            // `{consumer}@{incarnation}/{id}`: see `ops::claim` for what each part is for.
            let consumer = &self.inner.config.consumer;
            let me = format!("{consumer}@{}/{id}", crate::pubsub::incarnation());
            let (group, private) = match options.group {
                Some(group) => (group, false),
                None => (format!("~private.{id}"), true),
            };
            // A new group starts at the topic's first retained row, a private one at its end,
            // unless the options say otherwise (an existing group keeps its position).
            let start_at_end = match options.start {
                crate::pubsub::StartFrom::Earliest => false,
                crate::pubsub::StartFrom::Latest => true,
                crate::pubsub::StartFrom::Default | crate::pubsub::StartFrom::Time(_) => private,
            };
            let inner = &self.inner;
            let parts = self.stored_topics(topic);
            for name in &parts {
                super::db::reconnecting(|| async {
                    dispatch!(&inner.pool, (pool, ops) => ops::create_group(pool, &inner.queries, name, &group, start_at_end).await)
                })
                .await?;
            }
            if parts.len() == 1 {
                let stream = self.partition_stream(
                    topic,
                    &group,
                    me.into(),
                    private,
                    None,
                    inner.cancel.child_token(),
                );
                return Ok(Subscription::new(futures_util::stream::unfold(
                    stream,
                    |mut stream| async move {
                        let item = stream.next().await?;
                        Some((item, stream))
                    },
                )));
            }
            // Partitioned: one stream per partition, each with a lease holder name of its own,
            // each run by a task of its own that hands its deliveries over through a channel (a
            // stream polled only when the subscription's reader wants the next message could
            // stop half-way through a statement, holding a connection and, on SQLite, the
            // database's write lock, while the reader waits for an ack that needs them).
            // A named group's partitions are divided among its live members.
            let cancel = inner.cancel.child_token();
            let membership = if private {
                None
            } else {
                let membership = Arc::new(Membership {
                    inner: inner.clone(),
                    topic: topic.into(),
                    group: group.as_str().into(),
                    me: me.as_str().into(),
                    owned: Mutex::new(vec![false; parts.len()]),
                    changed: Notify::new(),
                    cancel: cancel.clone(),
                });
                super::db::reconnecting(|| membership.beat()).await?;
                inner.tasks.spawn(membership.clone().run());
                Some(membership)
            };
            let (sender, receiver) = tokio::sync::mpsc::channel(parts.len());
            // When the database is away every partition's stream reports it: the subscription
            // passes one such error on per second, not one per partition and poll.
            let last_error = Arc::new(Mutex::new(None::<Instant>));
            for (index, name) in parts.iter().enumerate() {
                let owner: Arc<str> = format!("{me}.{index}").into();
                let gate = membership.clone().map(|membership| (membership, index));
                let mut stream =
                    self.partition_stream(name, &group, owner, private, gate, cancel.child_token());
                let sender = sender.clone();
                let last_error = last_error.clone();
                inner.tasks.spawn(async move {
                    while let Some(item) = stream.next().await {
                        if let Err(error) = &item {
                            let mut last = last_error.lock();
                            if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
                                tracing::debug!(%error, "SQL backend: a partition's stream failed");
                                continue;
                            }
                            *last = Some(Instant::now());
                        }
                        if sender.send(item).await.is_err() {
                            break;
                        }
                    }
                });
            }
            // Dropping the subscription ends the partitions' tasks, and the member leaves.
            let stop = cancel.drop_guard();
            Ok(Subscription::new(futures_util::stream::unfold(
                (receiver, stop),
                |(mut receiver, stop)| async move {
                    let item = receiver.recv().await?;
                    Some((item, (receiver, stop)))
                },
            )))
        })
    }

    fn close(&self) -> OpFuture<'_> {
        self.inner.subscriber_closed.store(true, Ordering::Release);
        self.inner.cancel.cancel();
        OpFuture::boxed(async move {
            // Give every group back now (a delivery still in flight releases it when settled).
            let subs: Vec<_> =
                self.inner.subscriptions.lock().drain().filter_map(|(_, s)| s.upgrade()).collect();
            futures_util::future::join_all(subs.into_iter().filter_map(Lease::release)).await;
            self.inner.tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.tasks.wait()).await;
            self.inner.close_pool_if_done().await
        })
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> OpFuture<'a> {
        OpFuture::boxed(async move { self.delete_topics(&[topic.to_owned()]).await })
    }

    fn features(&self) -> Features {
        Features {
            backend: self.inner.pool.dialect().name(),
            consumer_groups: true,
            persistent: true,
            // Partitioned, messages without a key go to the partitions in turn.
            ordered: self.inner.config.partitions == 1,
            history: true,
            redelivery: true,
            ordered_single_subscriber: false,
            // Partitioned, a group's order holds per partition (so per key), not across them.
            strict_order: self.inner.config.partitions == 1,
            exactly_once: true,
            nack_delay: true,
            max_payload: Some(self.inner.max_payload()),
            settlement: Settlement::Individual,
            // A group (a partition) reads one message at a time, in order, whoever its consumers
            // are; a key always goes to the same partition.
            ordered_per_key: true,
            attempts: Attempts::Exact,
            dead_letter: false,
            release_uncounted: true,
            refuses_unroutable: false,
        }
    }
}

impl SqlPubSub {
    /// The stream of one stored topic (a topic, or one of its partitions) for one group, as lease
    /// holder `owner`; `gate`: the partitioned group's membership and this partition's number.
    fn partition_stream(
        &self,
        name: &str,
        group: &str,
        owner: Arc<str>,
        private: bool,
        gate: Option<(Arc<Membership>, usize)>,
        cancel: CancellationToken,
    ) -> SqlStream {
        let inner = &self.inner;
        let sub = Arc::new(SubShared {
            inner: inner.clone(),
            topic: name.into(),
            group: group.into(),
            owner,
            private,
            state: Mutex::new(SettleState::default()),
            settled: Notify::new(),
        });
        let lease: Arc<dyn Lease> = sub.clone();
        inner.subscriptions.lock().insert(sub.owner.clone(), Arc::downgrade(&lease));
        tokio::spawn(heartbeat(Arc::downgrade(&sub), inner.cancel.clone()));
        SqlStream {
            signal: inner.signal(name),
            cancel,
            sub,
            gate,
            given_back: true,
            idle: false,
            rescuing: false,
            buffer: VecDeque::new(),
            acked: 0,
            head_attempts: 0,
            lease_until: 0,
            first_of_claim: false,
        }
    }
}

/// A subscription's place in a partitioned group: it says it is alive in the `members` table,
/// reads who else is, and takes its share of the partitions. The live members, ordered by name,
/// are numbered `0..n`; member `r` owns the partitions `p` with `p % n == r`. Members that see
/// different lists for a moment may both want a partition: its lease still lets one read it at a
/// time, and the one that no longer owns it gives its lease back.
struct Membership {
    inner: Arc<Inner>,
    topic: Box<str>,
    group: Box<str>,
    me: Box<str>,
    /// Which partitions are ours.
    owned: Mutex<Vec<bool>>,
    /// Notified when `owned` changes.
    changed: Notify,
    /// Cancelled when the subscription is dropped or the subscriber closes: the member leaves.
    cancel: CancellationToken,
}

impl Membership {
    fn owns(&self, partition: usize) -> bool {
        self.owned.lock().get(partition).copied().unwrap_or(false)
    }

    /// Says we are alive, and takes our share of the partitions among the live members.
    async fn beat(&self) -> Result<()> {
        let inner = &self.inner;
        let now = now_ms();
        let alive_until = now + millis(inner.config.ack_deadline);
        let (topic, group, me) = (&*self.topic, &*self.group, &*self.me);
        let members = dispatch!(&inner.pool, (pool, ops) => ops::member_beat(
            pool, &inner.queries, topic, group, me, now, alive_until,
        ).await)?;
        let owned = share(&members, me, self.owned.lock().len());
        let changed = {
            let mut current = self.owned.lock();
            let changed = *current != owned;
            *current = owned;
            changed
        };
        if changed {
            tracing::debug!(
                topic,
                group,
                member = me,
                "SQL backend: the group's partitions were divided again"
            );
            self.changed.notify_waiters();
        }
        Ok(())
    }

    /// Beats until the subscription is dropped or the subscriber closes, then leaves the group.
    async fn run(self: Arc<Self>) {
        let every =
            (self.inner.config.ack_deadline / 3).clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.cancel.cancelled() => break,
            }
            if let Err(error) = self.beat().await {
                tracing::debug!(topic = &*self.topic, group = &*self.group, %error, "SQL backend: member heartbeat failed");
            }
        }
        let inner = &self.inner;
        let (topic, group, me) = (&*self.topic, &*self.group, &*self.me);
        let left = dispatch!(&inner.pool, (pool, ops) => ops::member_leave(pool, &inner.queries, topic, group, me).await);
        if let Err(error) = left {
            tracing::debug!(topic, group, %error, "SQL backend: leaving a partitioned group failed (it expires)");
        }
    }
}

/// The partitions (of `parts`) member `me` owns among the live `members` (names
/// `{consumer}@{incarnation}/{id}`): only the latest incarnation of each consumer counts (an
/// earlier one is a process that was restarted: its leases are taken over at once); the members
/// are numbered in name order, and member `r` of `n` owns the partitions `p % n == r`.
fn share(members: &[String], me: &str, parts: usize) -> Vec<bool> {
    fn split(name: &str) -> (&str, &str) {
        let (consumer, rest) = name.split_once('@').unwrap_or((name, ""));
        (consumer, rest.split_once('/').map_or(rest, |(incarnation, _)| incarnation))
    }
    let names = || members.iter().map(String::as_str).chain(std::iter::once(me));
    let mut latest: HashMap<&str, &str> = HashMap::new();
    for (consumer, incarnation) in names().map(split) {
        let entry = latest.entry(consumer).or_default();
        *entry = (*entry).max(incarnation);
    }
    let mut live: Vec<&str> = names()
        .filter(|name| {
            let (consumer, incarnation) = split(name);
            latest.get(consumer) == Some(&incarnation)
        })
        .collect();
    live.sort_unstable();
    live.dedup();
    // Not live: a later incarnation of our consumer name runs (and takes our leases over).
    let Some(rank) = live.iter().position(|name| *name == me) else { return vec![false; parts] };
    (0..parts).map(|p| p % live.len() == rank).collect()
}

/// What a subscription shares with the ackers of its deliveries.
struct SubShared {
    inner: Arc<Inner>,
    topic: Box<str>,
    group: Box<str>,
    owner: Arc<str>,
    private: bool,
    state: Mutex<SettleState>,
    settled: Notify,
}

#[derive(Default)]
struct SettleState {
    in_flight: Option<InFlight>,
    outcome: Option<Outcome>,
    /// The stream is gone: the settle of the in-flight delivery also releases the lease.
    stream_gone: bool,
    /// The lease was given back (or is being): nothing more to release.
    released: bool,
    /// The head attempt count to store when releasing with nothing in flight.
    release_attempts: i64,
}

#[derive(Clone, Copy)]
struct InFlight {
    seq: i64,
    prev: i64,
    /// When it was delivered (heartbeats stop after `SqlConfig::max_hold`).
    since: Instant,
    /// The head attempt count to store once this is acked (1 when the next is already read).
    next_attempts: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Acked { lease_until: i64 },
    Nacked { not_before: i64 },
    Lost,
}

impl SubShared {
    /// The release of this subscription's lease (or private group), unless already done or a
    /// delivery is in flight (its settle releases then).
    fn take_release(self: Arc<Self>) -> Option<impl std::future::Future<Output = ()>> {
        let head_attempts = {
            let mut state = self.state.lock();
            state.stream_gone = true;
            if state.released || state.in_flight.is_some() {
                return None;
            }
            state.released = true;
            state.release_attempts
        };
        Some(async move {
            let inner = &self.inner;
            let (topic, group, owner) = (&*self.topic, &*self.group, &*self.owner);
            let result = if self.private {
                dispatch!(&inner.pool, (pool, ops) => ops::delete_group(pool, &inner.queries, topic, group).await)
            } else {
                dispatch!(&inner.pool, (pool, ops) => ops::release(
                    pool, &inner.queries, topic, group, owner, head_attempts,
                ).await)
            };
            inner.subscriptions.lock().remove(&self.owner);
            match result {
                Ok(()) => inner.wake(topic),
                Err(error) => tracing::debug!(%error, "SQL backend: releasing a subscription's lease failed"),
            }
        })
    }

    async fn settle(self: Arc<Self>, token: u64, how: Settle) -> Result<()> {
        // No dead letter of its own: a rejected message is acked away (the router poisons it first).
        let nack = match how {
            Settle::Ack | Settle::Reject(_) => None,
            Settle::Nack(delay) => Some((delay.unwrap_or_default(), false)),
            Settle::Release => Some((Duration::ZERO, true)),
        };
        let (flight, release) = {
            let mut state = self.state.lock();
            match state.in_flight {
                Some(flight) if flight.seq as u64 == token && state.outcome.is_none() => {
                    if state.stream_gone {
                        state.released = true;
                    }
                    (flight, state.stream_gone)
                }
                _ => return Err(Error::new(ErrorKind::Backend, "delivery already settled")),
            }
        };
        let inner = &self.inner;
        let (topic, group, owner) = (&*self.topic, &*self.group, &*self.owner);
        // A broken connection is retried for a while (a database restart): a failed ack means
        // a duplicate. After a try whose outcome is unknown, an ack that finds the group moved
        // past its message had gone through.
        let retry_for = inner.config.publish_retry_for.min(inner.config.ack_deadline / 2);
        let started = Instant::now();
        let mut tries = 0_u32;
        let mut unknown = false;
        let result = loop {
            tries += 1;
            let result = match nack {
                None => {
                    let lease_until = now_ms() + millis(inner.config.ack_deadline);
                    let new_owner = if release { None } else { Some(owner) };
                    dispatch!(&inner.pool, (pool, ops) => ops::ack(
                        pool, &inner.queries, topic, group, owner, new_owner, flight.seq, flight.prev,
                        if release { 0 } else { flight.next_attempts }, lease_until,
                    ).await)
                    .map(|done| if done { Outcome::Acked { lease_until } } else { Outcome::Lost })
                }
                Some((delay, uncount)) => {
                    let not_before = now_ms() + millis(delay);
                    dispatch!(&inner.pool, (pool, ops) => ops::nack(
                        pool, &inner.queries, topic, group, owner, flight.prev, not_before, uncount,
                    ).await)
                    .map(|done| if done { Outcome::Nacked { not_before } } else { Outcome::Lost })
                }
            };
            match result {
                Err(error) if is_transient(&error) && started.elapsed() < retry_for => {
                    tracing::debug!(topic, group, %error, tries, "SQL backend: settle failed; retrying");
                    unknown = true;
                    tokio::time::sleep(
                        Duration::from_millis(2u64 << tries.min(9)).min(Duration::from_secs(1)),
                    )
                    .await;
                }
                Ok(Outcome::Lost) if unknown && nack.is_none() => {
                    // (A read: tried again on another connection if this one was cut too.)
                    let acked = super::db::reconnecting(|| async {
                        dispatch!(&inner.pool, (pool, ops) => ops::acked(pool, &inner.queries, topic, group).await)
                    })
                    .await;
                    break match acked {
                        // Our earlier try went through (the lease was renewed or released with it).
                        Ok(Some(acked)) if acked >= flight.seq => Ok(Outcome::Acked {
                            lease_until: if release {
                                0
                            } else {
                                now_ms() + millis(inner.config.ack_deadline)
                            },
                        }),
                        Ok(_) => Ok(Outcome::Lost),
                        Err(error) => Err(error),
                    };
                }
                other => break other,
            }
        };
        let outcome = *result.as_ref().unwrap_or(&Outcome::Lost);
        {
            let mut state = self.state.lock();
            state.in_flight = None;
            state.outcome = Some(outcome);
        }
        self.settled.notify_one();
        if matches!(outcome, Outcome::Nacked { .. }) || release {
            inner.wake(topic);
        }
        if release {
            if self.private {
                let _ = dispatch!(&inner.pool, (pool, ops) => ops::delete_group(pool, &inner.queries, topic, group).await);
            }
            inner.subscriptions.lock().remove(&self.owner);
        }
        match result? {
            Outcome::Lost if nack.is_none() => Err(Error::new(
                ErrorKind::Backend,
                "ack too late: the group's lease expired (ack deadline) and the message will be delivered again",
            )),
            _ => Ok(()),
        }
    }
}

impl Lease for SubShared {
    fn release(self: Arc<Self>) -> Option<BoxFuture<'static, ()>> {
        self.take_release().map(|release| Box::pin(release) as BoxFuture<'static, ()>)
    }
}

/// Settles the deliveries of one subscription; the token is the message's sequence number.
struct SqlAcker(Arc<SubShared>);

impl AckSink for SqlAcker {
    fn settle(&self, token: Token, _message: Option<Message>, how: Settle) -> OpFuture<'static> {
        OpFuture::boxed(self.0.clone().settle(token.get(), how))
    }
}

struct SqlStream {
    sub: Arc<SubShared>,
    signal: Arc<Notify>,
    cancel: CancellationToken,
    /// A partitioned group's membership, and this stream's partition: read only while it is ours.
    gate: Option<(Arc<Membership>, usize)>,
    /// The lease is not ours (given back, or never claimed).
    given_back: bool,
    /// The last claim found nothing to read.
    idle: bool,
    /// Delivering a batch of a partition that is not ours, taken over from a stuck holder.
    rescuing: bool,
    /// Claimed rows not yet delivered.
    buffer: VecDeque<Row>,
    /// The group's `acked` as of our lease.
    acked: i64,
    /// The head attempt count as stored.
    head_attempts: i64,
    /// Our lease, as far as we know.
    lease_until: i64,
    /// The next buffered row is the first of its claim (delivered with `head_attempts`).
    first_of_claim: bool,
}

impl SqlStream {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        let poll = self.sub.inner.config.poll_interval;
        let mut not_before = 0;
        loop {
            if self.cancel.is_cancelled() {
                return None;
            }
            // Strict order: wait for the previous delivery to be settled.
            let pending = {
                let mut state = self.sub.state.lock();
                match state.outcome.take() {
                    Some(outcome) => Some(outcome),
                    None if state.in_flight.is_some() => None,
                    None => Some(Outcome::Acked { lease_until: self.lease_until }),
                }
            };
            match pending {
                None => {
                    let settled = self.sub.settled.notified();
                    tokio::select! {
                        () = settled => {}
                        () = self.cancel.cancelled() => return None,
                    }
                    continue;
                }
                Some(Outcome::Acked { lease_until }) => {
                    self.lease_until = lease_until;
                    self.sub.state.lock().release_attempts = 0;
                }
                Some(Outcome::Nacked { not_before: at }) => {
                    self.buffer.clear();
                    not_before = at;
                }
                Some(Outcome::Lost) => self.buffer.clear(),
            }
            if let Some((membership, partition)) = self.gate.clone() {
                if !self.rescuing && !membership.owns(partition) {
                    // Not our partition (any more): give its lease back, and wait until it is;
                    // meanwhile, look now and then whether its holder is stuck.
                    let changed = membership.changed.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    if !membership.owns(partition) {
                        self.give_back().await;
                        let every = (self.sub.inner.config.ack_deadline / 3).max(poll);
                        tokio::select! {
                            () = changed => continue,
                            () = tokio::time::sleep(every) => {}
                            () = self.cancel.cancelled() => return None,
                        }
                        self.rescue().await;
                        continue;
                    }
                }
            }
            let now = now_ms();
            // A buffer whose lease has (nearly) run out is no longer ours to deliver.
            let margin = millis(self.sub.inner.config.ack_deadline) / 10;
            if !self.buffer.is_empty() && now + margin >= self.lease_until {
                self.buffer.clear();
            }
            if let Some((seq, message)) = self.buffer.pop_front() {
                let attempt = if std::mem::take(&mut self.first_of_claim) { self.head_attempts } else { 1 };
                let next_attempts = i64::from(!self.buffer.is_empty());
                self.sub.state.lock().in_flight =
                    Some(InFlight { seq, prev: self.acked, since: Instant::now(), next_attempts });
                self.acked = seq;
                self.head_attempts = next_attempts;
                let acker = Acker::new(Arc::new(SqlAcker(self.sub.clone())), Token::new(seq as u64), None);
                let attempt = u32::try_from(attempt.max(1)).unwrap_or(u32::MAX);
                return Some(Ok(Delivery::new(message, attempt, acker)));
            }
            if std::mem::take(&mut self.rescuing) {
                // The batch taken over from a stuck holder is delivered: back to the gate.
                continue;
            }
            // Nothing buffered: claim the group and read a batch.
            let signal = self.signal.clone();
            let woken = signal.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if now >= not_before {
                match self.claim(now).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(error) => {
                        if self.cancel.is_cancelled() {
                            return None;
                        }
                        // Report it, then go on polling (the database may come back).
                        tokio::select! {
                            () = tokio::time::sleep(poll) => {}
                            () = self.cancel.cancelled() => return None,
                        }
                        return Some(Err(error));
                    }
                }
            }
            let wait = if not_before > now {
                poll.min(Duration::from_millis((not_before - now) as u64))
            } else {
                poll
            };
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(wait) => {}
                () = self.cancel.cancelled() => return None,
            }
        }
    }

    /// Gives the lease back (a partition that is no longer ours), with nothing in flight.
    async fn give_back(&mut self) {
        self.buffer.clear();
        if std::mem::replace(&mut self.given_back, true) {
            return;
        }
        let inner = &self.sub.inner;
        let (topic, group, owner) = (&*self.sub.topic, &*self.sub.group, &*self.sub.owner);
        let head_attempts = self.sub.state.lock().release_attempts;
        let released = dispatch!(&inner.pool, (pool, ops) => ops::release(
            pool, &inner.queries, topic, group, owner, head_attempts,
        ).await);
        match released {
            Ok(()) => inner.wake(topic),
            Err(error) => {
                tracing::debug!(topic, group, %error, "SQL backend: giving a partition back failed (its lease expires)")
            }
        }
    }

    /// Takes the group's lease and reads a batch; `false` when there is nothing for us.
    async fn claim(&mut self, now: i64) -> Result<bool> {
        let inner = &self.sub.inner;
        if self.idle {
            // The last claim found nothing: read whether there is anything new before writing
            // (a claim is an UPDATE, which on SQLite takes the database's write lock even when
            // it changes nothing, so idle polls of many subscriptions would queue up writers).
            let (topic, group) = (&*self.sub.topic, &*self.sub.group);
            let pending = dispatch!(&inner.pool, (pool, ops) => ops::waiting(pool, &inner.queries, topic, group, None).await)?;
            if !pending {
                return Ok(false);
            }
        }
        let claimed = self.claim_now(now).await;
        self.idle = !matches!(claimed, Ok(true));
        if self.gate.is_some() && matches!(claimed, Ok(false)) {
            // A partition's holder gives its lease back when it has read everything: a lease
            // that runs out is then a sign of a stuck holder (see `rescue`).
            self.give_back().await;
        }
        claimed
    }

    /// Takes a batch of a partition that is not ours over from a holder that let its lease run
    /// out with messages waiting (its handler hangs, or its process died and is still listed
    /// as a member), as a standby subscription of an unpartitioned group would.
    async fn rescue(&mut self) {
        let sub = self.sub.clone();
        let (inner, topic, group) = (&sub.inner, &*sub.topic, &*sub.group);
        let now = now_ms();
        let stuck = dispatch!(&inner.pool, (pool, ops) => ops::waiting(pool, &inner.queries, topic, group, Some(now)).await);
        if matches!(stuck, Ok(true)) && matches!(self.claim_now(now).await, Ok(true)) {
            tracing::debug!(topic, group, "SQL backend: took a partition's batch over from a stuck holder");
            self.rescuing = true;
        }
    }

    async fn claim_now(&mut self, now: i64) -> Result<bool> {
        let inner = &self.sub.inner;
        let config = &inner.config;
        let lease_until = now + millis(config.ack_deadline);
        let batch = i64::try_from(config.batch_size).unwrap_or(i64::MAX);
        let batch_bytes = i64::try_from(config.batch_bytes).unwrap_or(i64::MAX);
        let (topic, group, owner) = (&*self.sub.topic, &*self.sub.group, &*self.sub.owner);
        let claimed = dispatch!(&inner.pool, (pool, ops) => ops::claim(
            pool, &inner.queries, topic, group, owner, now, lease_until, batch, batch_bytes,
        ).await)?;
        let Some((acked, attempts, rows)) = claimed else { return Ok(false) };
        self.given_back = false;
        self.acked = acked;
        self.lease_until = lease_until;
        if rows.is_empty() {
            // Claimed but nothing to read (rows removed by hand): give the lease back.
            self.head_attempts = (attempts - 1).max(0);
            dispatch!(&inner.pool, (pool, ops) => ops::release(
                pool, &inner.queries, topic, group, owner, self.head_attempts,
            ).await)?;
            self.given_back = true;
            return Ok(false);
        }
        self.head_attempts = attempts;
        self.first_of_claim = true;
        self.buffer = rows.into();
        // Released before delivering the head, the count goes back to what it was.
        self.sub.state.lock().release_attempts = (attempts - 1).max(0);
        Ok(true)
    }
}

impl Drop for SqlStream {
    fn drop(&mut self) {
        // Give the group back now rather than at the lease's end. With a delivery in flight the
        // lease stays until it is settled (the settle releases it), so a handler that finishes
        // after the subscription was dropped can still ack.
        let Some(release) = self.sub.clone().take_release() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        handle.spawn(self.sub.inner.tasks.track_future(release));
    }
}

/// Renews the group's lease while a delivery of the subscription is in flight, every third of the
/// ack deadline, so a handler slower than the deadline keeps its message (up to
/// `SqlConfig::max_hold`); ends with the subscription, or when the subscriber closes.
async fn heartbeat(sub: std::sync::Weak<SubShared>, closed: CancellationToken) {
    let every = match sub.upgrade() {
        Some(sub) => (sub.inner.config.ack_deadline / 3).max(Duration::from_millis(10)),
        None => return,
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = closed.cancelled() => return,
        }
        let Some(sub) = sub.upgrade() else { return };
        let flight = {
            let state = sub.state.lock();
            if state.released {
                return;
            }
            match (state.in_flight, state.outcome) {
                (Some(flight), None) => flight,
                _ => continue,
            }
        };
        let inner = &sub.inner;
        if flight.since.elapsed() >= inner.config.max_hold {
            continue;
        }
        let (topic, group, owner) = (&*sub.topic, &*sub.group, &*sub.owner);
        let lease_until = now_ms() + millis(inner.config.ack_deadline);
        let renewed = dispatch!(&inner.pool, (pool, ops) => ops::renew(
            pool, &inner.queries, topic, group, owner, flight.prev, lease_until,
        ).await);
        match renewed {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(topic, group, "SQL backend: lease already lost; heartbeat not renewed")
            }
            Err(error) => tracing::debug!(topic, group, %error, "SQL backend: lease heartbeat failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    fn owned(members: &[&str], me: &str, parts: usize) -> Vec<usize> {
        let members: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
        share(&members, me, parts).iter().enumerate().filter(|(_, o)| **o).map(|(p, _)| p).collect()
    }

    #[test]
    fn partitions_are_divided_in_name_order() {
        let members = ["b@2/x", "a@1/y", "c@3/z"];
        assert_eq!(owned(&members, "a@1/y", 8), [0, 3, 6]);
        assert_eq!(owned(&members, "b@2/x", 8), [1, 4, 7]);
        assert_eq!(owned(&members, "c@3/z", 8), [2, 5]);
        // Alone (or not listed yet): everything.
        assert_eq!(owned(&[], "a@1/y", 3), [0, 1, 2]);
        // More members than partitions: the last ones stand by.
        assert_eq!(owned(&["a@1/1", "b@1/1", "c@1/1"], "c@1/1", 2), Vec::<usize>::new());
    }

    #[test]
    fn only_the_latest_incarnation_of_a_consumer_counts() {
        // `a` restarted (incarnation 2 after 1): its earlier self is not a member any more.
        let members = ["a@1/old", "a@2/new", "b@1/x"];
        assert_eq!(owned(&members, "a@2/new", 4), [0, 2]);
        assert_eq!(owned(&members, "b@1/x", 4), [1, 3]);
        // Two subscriptions of one process are two members.
        let members = ["a@2/s1", "a@2/s2"];
        assert_eq!(owned(&members, "a@2/s2", 4), [1, 3]);
        // An earlier incarnation still running beside a later one of its name owns nothing.
        assert_eq!(owned(&["a@1/old", "a@2/new"], "a@1/old", 4), Vec::<usize>::new());
    }
}
