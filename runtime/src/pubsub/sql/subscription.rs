//! The subscribing half of [`SqlPubSub`]: a subscription ([`SqlStream`]) claims its group's lease,
//! reads a batch and hands it out one message at a time; its ackers ([`SqlAcker`]) settle each
//! delivery on the group's row.

use std::collections::VecDeque;
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
            let id = uuid::Uuid::now_v7().simple().to_string();
            // `{consumer}@{incarnation}/{id}`: see `ops::claim` for what each part is for.
            let consumer = &self.inner.config.consumer;
            let owner: Arc<str> = format!("{consumer}@{}/{id}", crate::pubsub::incarnation()).into();
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
            super::db::reconnecting(|| async {
                dispatch!(&inner.pool, (pool, ops) => ops::create_group(pool, &inner.queries, topic, &group, start_at_end).await)
            })
            .await?;
            let sub = Arc::new(SubShared {
                inner: inner.clone(),
                topic: topic.into(),
                group: group.into(),
                owner,
                private,
                state: Mutex::new(SettleState::default()),
                settled: Notify::new(),
            });
            let lease: Arc<dyn Lease> = sub.clone();
            inner.subscriptions.lock().insert(sub.owner.clone(), Arc::downgrade(&lease));
            tokio::spawn(heartbeat(Arc::downgrade(&sub), inner.cancel.clone()));
            let stream = SqlStream {
                signal: inner.signal(topic),
                cancel: inner.cancel.child_token(),
                sub,
                buffer: VecDeque::new(),
                acked: 0,
                head_attempts: 0,
                lease_until: 0,
                first_of_claim: false,
            };
            Ok(Subscription::new(futures_util::stream::unfold(stream, |mut stream| async move {
                let item = stream.next().await?;
                Some((item, stream))
            })))
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
            ordered: true,
            history: true,
            redelivery: true,
            ordered_single_subscriber: false,
            strict_order: true,
            exactly_once: true,
            nack_delay: true,
            max_payload: Some(self.inner.max_payload()),
            settlement: Settlement::Individual,
            // A group reads one message at a time, in order, whoever its consumers are.
            ordered_per_key: true,
            attempts: Attempts::Exact,
            dead_letter: false,
            release_uncounted: true,
            refuses_unroutable: false,
        }
    }
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

    /// Takes the group's lease and reads a batch; `false` when there is nothing for us.
    async fn claim(&mut self, now: i64) -> Result<bool> {
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
        self.acked = acked;
        self.lease_until = lease_until;
        if rows.is_empty() {
            // Claimed but nothing to read (rows removed by hand): give the lease back.
            self.head_attempts = (attempts - 1).max(0);
            dispatch!(&inner.pool, (pool, ops) => ops::release(
                pool, &inner.queries, topic, group, owner, self.head_attempts,
            ).await)?;
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
