//! The reading side: a group subscription (a reader on its own connection, a claimer, and the
//! [`AckSink`] that settles its deliveries) and a subscription without a group (a reader).
//!
//! Deliveries wait in a [`Queue`] between the tasks that fetch them and the [`Subscription`]
//! that hands them out. Every delivery counts against the subscription's in-flight limit from the
//! moment it is read until it is settled; the reader asks for no more than the room left.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::entry::{self, Entry, StreamId};
use super::scripts;
use super::streams::Inner;
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::pubsub::{AckSink, Acker, Delivery, OpFuture, Settle, Subscription, Token};

/// The idle time that gives an entry back: any subscription of the group claims it at its next
/// look (a year, in milliseconds).
const GIVE_BACK_IDLE_MS: u64 = 365 * 24 * 3600 * 1000;

/// One fetched entry, waiting to be handed out.
pub(super) struct Item {
    id: StreamId,
    message: Message,
    attempt: u32,
}

/// Fetched deliveries on their way to the subscription's stream.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Item>,
    closed: bool,
}

impl Queue {
    /// Adds an item; gives it back when the queue is closed (the subscription has ended).
    fn push(&self, item: Item) -> std::result::Result<(), Item> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(item);
        }
        state.items.push_back(item);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    fn pop(&self) -> Option<Item> {
        self.state.lock().items.pop_front()
    }

    /// Closes the queue and returns what was never handed out.
    fn close(&self) -> Vec<Item> {
        let mut state = self.state.lock();
        state.closed = true;
        state.items.drain(..).collect()
    }

    fn is_closed(&self) -> bool {
        self.state.lock().closed
    }
}

/// Deliveries read and not yet settled: how many, and how many times each entry is out.
#[derive(Default)]
struct Inflight {
    ids: HashMap<StreamId, u32>,
    count: usize,
}

/// What both kinds of subscription share: the queue, the in-flight count and the end.
struct Flow {
    queue: Queue,
    inflight: Mutex<Inflight>,
    room: Notify,
    max_in_flight: usize,
    cancel: CancellationToken,
    /// The client id of the reader's connection (0: unknown).
    reader: AtomicI64,
}

impl Flow {
    fn new(max_in_flight: usize, cancel: CancellationToken) -> Self {
        Flow {
            queue: Queue::default(),
            inflight: Mutex::new(Inflight::default()),
            room: Notify::new(),
            max_in_flight: max_in_flight.max(1),
            cancel,
            reader: AtomicI64::new(0),
        }
    }

    /// Once the subscription ends, ends the reader's blocking read at once (`CLIENT UNBLOCK`:
    /// the read returns empty, so nothing is read that no one would hand out).
    async fn unblock_at_end(self: &Flow, inner: &Inner) {
        self.cancel.cancelled().await;
        let id = self.reader.load(Ordering::Acquire);
        if id != 0 {
            let unblock = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(id)
                .query_async::<Value>(&mut inner.manager.clone())
                .await;
            if let Err(error) = unblock {
                tracing::debug!(%error, "redis: CLIENT UNBLOCK failed; the reader ends after its block time");
            }
        }
    }

    /// Counts `item` in flight and queues it; returns it when the subscription has ended.
    fn admit(&self, item: Item) -> std::result::Result<(), Item> {
        self.started(item.id);
        self.queue.push(item).inspect_err(|item| self.done(item.id))
    }

    fn started(&self, id: StreamId) {
        let mut inflight = self.inflight.lock();
        *inflight.ids.entry(id).or_insert(0) += 1;
        inflight.count += 1;
    }

    /// One delivery of `id` is settled.
    fn done(&self, id: StreamId) {
        let mut inflight = self.inflight.lock();
        if let Some(n) = inflight.ids.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                inflight.ids.remove(&id);
            }
            inflight.count -= 1;
        }
        drop(inflight);
        self.room.notify_one();
    }

    fn is_out(&self, id: StreamId) -> bool {
        self.inflight.lock().ids.contains_key(&id)
    }

    fn room_left(&self) -> usize {
        self.max_in_flight.saturating_sub(self.inflight.lock().count)
    }

    /// Waits until at least `wanted` more may be read (fewer when the limit is lower: at most
    /// half of it, at least 1), so that settling one delivery at a time does not turn into one
    /// read per delivery; `None` once the subscription has ended.
    async fn wait_room(&self, wanted: usize) -> Option<usize> {
        let wanted = wanted.min(self.max_in_flight / 2).max(1);
        loop {
            let notified = self.room.notified();
            if self.cancel.is_cancelled() {
                return None;
            }
            let room = self.room_left();
            if room >= wanted {
                return Some(room);
            }
            tokio::select! {
                () = notified => {}
                () = self.cancel.cancelled() => return None,
            }
        }
    }

    /// The next item to hand out; `None` once the subscription has ended.
    async fn next(&self) -> Option<Item> {
        loop {
            let ready = self.queue.ready.notified();
            if self.cancel.is_cancelled() {
                return None;
            }
            if let Some(item) = self.queue.pop() {
                return Some(item);
            }
            tokio::select! {
                () = ready => {}
                () = self.cancel.cancelled() => return None,
            }
        }
    }
}

/// Ends a subscription's tasks when its stream is dropped.
struct EndOnDrop(CancellationToken);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Backoff before reconnection attempt `failures` (1, 2, ...): 100 ms doubling up to `max`, with
/// up to a quarter of jitter.
pub(super) fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << failures.saturating_sub(1).min(16)).min(max);
    base + base.mul_f64(fastrand::f64() * 0.25)
}

/// Sleeps `delay` unless `cancel` comes first (then `false`).
async fn pause(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = cancel.cancelled() => false,
    }
}

fn redis_error(error: redis::RedisError, what: &str) -> Error {
    Error::backend(error).context(format!("redis: {what}"))
}

// ---------------------------------------------------------------------------------------------
// Consumer slots

/// The consumer numbers in use in this process, per server, stream, group and name.
static SLOTS: Mutex<Option<HashMap<String, BTreeSet<usize>>>> = Mutex::new(None);

/// A consumer number held by a live subscription (given back when dropped).
pub(super) struct Slot {
    key: String,
    number: usize,
}

impl Slot {
    /// The lowest number free under `key`.
    pub(super) fn take(key: String) -> Slot {
        let mut slots = SLOTS.lock();
        let used = slots.get_or_insert_with(HashMap::new).entry(key.clone()).or_default();
        let number = (0..).find(|n| !used.contains(n)).expect("a free number");
        used.insert(number);
        Slot { key, number }
    }

    pub(super) fn number(&self) -> usize {
        self.number
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = SLOTS.lock();
        if let Some(map) = slots.as_mut() {
            if let Some(used) = map.get_mut(&self.key) {
                used.remove(&self.number);
                if used.is_empty() {
                    map.remove(&self.key);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Group subscriptions

/// A subscription in a consumer group.
pub(super) struct Group {
    inner: Arc<Inner>,
    topic: String,
    key: String,
    group: String,
    consumer: String,
    flow: Flow,
    _slot: Slot,
}

/// Starts a group subscription: its reader (on `connection`, its own) and its claimer.
#[allow(clippy::too_many_arguments)]
pub(super) fn start_group(
    inner: Arc<Inner>,
    topic: String,
    key: String,
    group: String,
    consumer: String,
    slot: Slot,
    max_in_flight: usize,
    (connection, reader): (MultiplexedConnection, i64),
) -> Subscription {
    let cancel = inner.cancel.child_token();
    let state = Arc::new(Group {
        inner,
        topic,
        key,
        group,
        consumer,
        flow: Flow::new(max_in_flight, cancel.clone()),
        _slot: slot,
    });
    state.flow.reader.store(reader, Ordering::Release);
    tokio::spawn(read_group(state.clone(), connection));
    tokio::spawn(claim(state.clone()));
    let watched = state.clone();
    tokio::spawn(async move { watched.flow.unblock_at_end(&watched.inner).await });
    let sink: Arc<dyn AckSink> = Arc::new(GroupSink(state.clone()));
    let guard = EndOnDrop(cancel);
    Subscription::new(futures_util::stream::unfold((state, sink, guard), |(state, sink, guard)| async move {
        let item = state.flow.next().await?;
        let acker = Acker::new(sink.clone(), item.id.token(), None);
        Some((Ok(Delivery::new(item.message, item.attempt, acker)), (state, sink, guard)))
    }))
}

impl Group {
    fn manager(&self) -> redis::aio::ConnectionManager {
        self.inner.manager.clone()
    }

    fn item(&self, id: StreamId, fields: Vec<Value>, attempt: u32) -> Item {
        Item { id, message: entry::decode(&self.topic, id, fields), attempt: attempt.max(1) }
    }

    /// Queues fetched items; those that find the subscription ended are given back.
    async fn admit_all(&self, items: Vec<Item>) {
        let mut refused = Vec::new();
        for item in items {
            if let Err(item) = self.flow.admit(item) {
                refused.push(item.id);
            }
        }
        if !refused.is_empty() {
            self.give_back(&refused).await;
        }
    }

    /// Makes entries this consumer holds claimable at once by any subscription of the group.
    async fn give_back(&self, ids: &[StreamId]) {
        let mut command = redis::cmd("EVAL");
        command.arg(scripts::SET_IDLE).arg(1).arg(&self.key).arg(&self.group).arg(&self.consumer);
        command.arg(GIVE_BACK_IDLE_MS);
        for id in ids {
            command.arg(id.to_string());
        }
        if let Err(error) = command.query_async::<Value>(&mut self.manager()).await {
            tracing::debug!(%error, topic = self.topic, "redis: giving entries back failed; they are claimed after their idle time");
        }
    }

    async fn xack(&self, ids: &[StreamId]) -> Result<()> {
        let mut command = redis::cmd("XACK");
        command.arg(&self.key).arg(&self.group);
        for id in ids {
            command.arg(id.to_string());
        }
        command.query_async::<Value>(&mut self.manager()).await.map_err(|e| redis_error(e, "XACK"))?;
        Ok(())
    }

    /// Retries the ack of `id` with backoff for up to `claim_idle` (after that another
    /// subscription may claim the entry anyway).
    async fn ack_later(self: Arc<Self>, id: StreamId) {
        let config = &self.inner.config;
        let deadline = tokio::time::Instant::now() + config.claim_idle;
        let mut failures = 1;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(backoff(failures, config.max_backoff)).await;
            match self.xack(&[id]).await {
                Ok(()) => return,
                Err(error) => {
                    failures += 1;
                    tracing::debug!(%error, entry = %id, "redis: the ack still fails");
                }
            }
        }
        tracing::warn!(topic = self.topic, entry = %id, "redis: giving up an ack; the entry will be delivered again");
    }

    /// Delivers `id` again to this subscription, if this consumer still holds it.
    async fn redeliver(&self, id: StreamId) -> Result<()> {
        if self.flow.cancel.is_cancelled() || self.flow.queue.is_closed() {
            self.give_back(&[id]).await;
            return Ok(());
        }
        let mut command = redis::cmd("EVAL");
        command.arg(scripts::REDELIVER).arg(1).arg(&self.key).arg(&self.group).arg(&self.consumer);
        command.arg(id.to_string());
        let reply: Value =
            command.query_async(&mut self.manager()).await.map_err(|e| redis_error(e, "redelivering"))?;
        let parts = match reply {
            Value::Nil | Value::Boolean(false) => return Ok(()),
            other => entry::array("redelivery", other)?,
        };
        let mut parts = parts.into_iter();
        let count = parts.next().map(|c| entry::int("redelivery", &c)).transpose()?.unwrap_or(0);
        let Some(found) = parts.next() else { return Ok(()) };
        let entries = entry::entries("redelivery", Value::Array(vec![found]))?;
        let items = entries
            .into_iter()
            .filter_map(|Entry { id, fields }| {
                Some(self.item(id, fields?, u32::try_from(count).unwrap_or(u32::MAX)))
            })
            .collect();
        self.admit_all(items).await;
        Ok(())
    }

    /// A delayed nack: waits, keeping the entry from being claimed meanwhile, then redelivers.
    async fn redeliver_after(self: Arc<Self>, id: StreamId, delay: Duration) {
        let deadline = tokio::time::Instant::now() + delay;
        let refresh = self.inner.config.claim_idle / 2;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            let step = (deadline - now).min(refresh.max(Duration::from_millis(1)));
            if !pause(step, &self.flow.cancel).await {
                self.give_back(&[id]).await;
                return;
            }
            if tokio::time::Instant::now() < deadline {
                let mut command = redis::cmd("EVAL");
                command.arg(scripts::SET_IDLE).arg(1).arg(&self.key).arg(&self.group).arg(&self.consumer);
                command.arg(0).arg(id.to_string());
                if let Err(error) = command.query_async::<Value>(&mut self.manager()).await {
                    tracing::debug!(%error, "redis: keeping a delayed nack from being claimed failed");
                }
            }
        }
        if let Err(error) = self.redeliver(id).await {
            tracing::warn!(%error, topic = self.topic, entry = %id, "redis: redelivering a nacked entry failed; it is claimed after its idle time");
        }
    }

    async fn reject(&self, id: StreamId, reason: &str) -> Result<()> {
        let Some(suffix) = &self.inner.config.dead_letter_suffix else {
            return self.xack(&[id]).await;
        };
        let dead = self.inner.stream_key(&format!("{}{suffix}", self.topic));
        let mut command = redis::cmd("EVAL");
        command.arg(scripts::REJECT).arg(2).arg(&self.key).arg(dead);
        command.arg(&self.group).arg(id.to_string()).arg(reason).arg(&self.topic);
        command.query_async::<Value>(&mut self.manager()).await.map_err(|e| redis_error(e, "rejecting"))?;
        Ok(())
    }

    /// The delivery counts of pending entries `first..=last` this consumer holds.
    async fn counts(&self, first: StreamId, last: StreamId, n: usize) -> Result<HashMap<StreamId, u32>> {
        let reply: Value = redis::cmd("XPENDING")
            .arg(&self.key)
            .arg(&self.group)
            .arg(first.to_string())
            .arg(last.to_string())
            .arg(n)
            .arg(&self.consumer)
            .query_async(&mut self.manager())
            .await
            .map_err(|e| redis_error(e, "XPENDING"))?;
        let mut counts = HashMap::new();
        for row in entry::array("XPENDING", reply)? {
            let row = entry::array("XPENDING", row)?;
            if let (Some(id), Some(count)) = (row.first(), row.get(3)) {
                let count = entry::int("XPENDING", count)?;
                counts.insert(entry::stream_id("XPENDING", id)?, u32::try_from(count).unwrap_or(u32::MAX));
            }
        }
        Ok(counts)
    }

    /// Deletes the group's consumers idle for `idle` that hold nothing.
    async fn forget_consumers(&self, idle: Duration) {
        let mut command = redis::cmd("EVAL");
        command.arg(scripts::FORGET_CONSUMERS).arg(1).arg(&self.key).arg(&self.group);
        command.arg(idle.as_millis() as u64).arg(&self.consumer);
        match command.query_async::<i64>(&mut self.manager()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(
                topic = self.topic,
                group = self.group,
                n,
                "redis: deleted idle consumers that held nothing"
            ),
            Err(error) => {
                tracing::debug!(%error, topic = self.topic, "redis: deleting idle consumers failed")
            }
        }
    }

    async fn create_group(&self) -> Result<()> {
        self.inner.create_group(&self.key, &self.group, "0").await
    }
}

struct GroupSink(Arc<Group>);

impl AckSink for GroupSink {
    fn settle(&self, token: Token, _message: Option<Message>, how: Settle) -> OpFuture<'static> {
        let group = self.0.clone();
        let id = StreamId::from_token(token);
        OpFuture::boxed(async move {
            let result = match how {
                Settle::Ack => match group.xack(&[id]).await {
                    Ok(()) => Ok(()),
                    Err(error) => {
                        // Handled, but the ack did not reach the server (it is away): keep
                        // trying a while, so the entry is not handled again once it is back.
                        tokio::spawn(group.clone().ack_later(id));
                        Err(error.context("retrying the ack in the background"))
                    }
                },
                Settle::Reject(reason) => group.reject(id, &reason).await,
                Settle::Nack(Some(delay)) if !delay.is_zero() => {
                    tokio::spawn(group.clone().redeliver_after(id, delay));
                    Ok(())
                }
                Settle::Nack(_) | Settle::Release => {
                    // Settled first: the redelivery is a new delivery of its own.
                    group.flow.done(id);
                    return group.redeliver(id).await;
                }
            };
            group.flow.done(id);
            result
        })
    }
}

/// The reader of a group subscription: first this consumer's own pending entries (what it read
/// and did not settle in an earlier life, or before a reconnection), then new entries, blocking.
async fn read_group(group: Arc<Group>, connection: MultiplexedConnection) {
    let config = &group.inner.config;
    let mut connection = Some(connection);
    let mut history = Some(StreamId::ZERO);
    let mut failures = 0u32;
    loop {
        let Some(room) = group.flow.wait_room(config.batch).await else { break };
        let conn = match connection.as_mut() {
            Some(conn) => conn,
            None => match group.inner.reader_connection().await {
                Ok((conn, id)) => {
                    group.flow.reader.store(id, Ordering::Release);
                    connection.insert(conn)
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, topic = group.topic, "redis: reconnecting the reader failed");
                    if !pause(backoff(failures, config.max_backoff), &group.flow.cancel).await {
                        break;
                    }
                    continue;
                }
            },
        };
        let count = room.min(config.batch);
        let mut command = redis::cmd("XREADGROUP");
        command.arg("GROUP").arg(&group.group).arg(&group.consumer).arg("COUNT").arg(count);
        match history {
            Some(after) => command.arg("STREAMS").arg(&group.key).arg(after.to_string()),
            None => command
                .arg("BLOCK")
                .arg(config.block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&group.key)
                .arg(">"),
        };
        let reply = command.query_async::<Value>(conn).await;
        let result = match reply {
            Ok(value) => match entry::read_reply("XREADGROUP", value) {
                Ok(entries) => take_read(&group, &mut history, entries).await,
                Err(error) => Err(error),
            },
            Err(error) if error.code() == Some("NOGROUP") => {
                // The group (or the stream) went away: a server that lost its data, a deleted key.
                tracing::warn!(
                    topic = group.topic,
                    group = group.group,
                    "redis: the group is gone; creating it again"
                );
                group.create_group().await
            }
            Err(error) => {
                connection = None;
                Err(redis_error(error, "XREADGROUP"))
            }
        };
        match result {
            Ok(()) => failures = 0,
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, topic = group.topic, failures, "redis: reading failed; trying again");
                // A reply lost with the connection left entries pending here: read them first.
                history = Some(StreamId::ZERO);
                if !pause(backoff(failures, config.max_backoff), &group.flow.cancel).await {
                    break;
                }
            }
        }
    }
    let left: Vec<StreamId> = group.flow.queue.close().into_iter().map(|item| item.id).collect();
    for id in &left {
        group.flow.done(*id);
    }
    if !left.is_empty() {
        group.give_back(&left).await;
    }
}

/// Queues what one read returned.
async fn take_read(group: &Group, history: &mut Option<StreamId>, entries: Vec<Entry>) -> Result<()> {
    let Some(_) = history else {
        let items = entries.into_iter().filter_map(|e| Some(group.item(e.id, e.fields?, 1))).collect();
        group.admit_all(items).await;
        return Ok(());
    };
    let (Some(first), Some(last)) = (entries.first().map(|e| e.id), entries.last().map(|e| e.id)) else {
        *history = None; // nothing more pending here: on to new entries
        return Ok(());
    };
    *history = Some(last);
    let deleted: Vec<StreamId> = entries.iter().filter(|e| e.fields.is_none()).map(|e| e.id).collect();
    if !deleted.is_empty() {
        group.xack(&deleted).await?;
    }
    let counts = group.counts(first, last, entries.len()).await?;
    let items = entries
        .into_iter()
        .filter(|e| !group.flow.is_out(e.id))
        .filter_map(|e| {
            let attempt = counts.get(&e.id).copied().unwrap_or(1);
            Some(group.item(e.id, e.fields?, attempt))
        })
        .collect();
    group.admit_all(items).await;
    Ok(())
}

/// The claimer of a group subscription: every `claim_interval`, claims entries of the group idle
/// for `claim_idle` (a dead consumer's, a delivery held past the deadline, one given back).
async fn claim(group: Arc<Group>) {
    let config = &group.inner.config;
    let mut cursor = StreamId::ZERO;
    let mut first = true;
    let forget_every = config
        .forget_consumers_after
        .map(|idle| (idle / 4).clamp(config.claim_interval, Duration::from_secs(600)));
    let mut forgotten_at = tokio::time::Instant::now();
    loop {
        // The first look at once: entries given back by a subscription that just ended.
        let wait = if std::mem::take(&mut first) { Duration::ZERO } else { config.claim_interval };
        if !pause(wait, &group.flow.cancel).await {
            return;
        }
        if let (Some(every), Some(idle)) = (forget_every, config.forget_consumers_after) {
            if forgotten_at.elapsed() >= every {
                forgotten_at = tokio::time::Instant::now();
                group.forget_consumers(idle).await;
            }
        }
        let room = group.flow.room_left();
        if room == 0 {
            continue;
        }
        let mut command = redis::cmd("EVAL");
        command.arg(scripts::CLAIM).arg(1).arg(&group.key).arg(&group.group).arg(&group.consumer);
        command.arg(config.claim_idle.as_millis() as u64).arg(cursor.to_string()).arg(room.min(config.batch));
        let reply = command.query_async::<Value>(&mut group.manager()).await;
        match reply.map_err(|e| redis_error(e, "claiming")).and_then(|v| parse_claim(&group, v)) {
            Ok((next, items, deleted)) => {
                cursor = next;
                if deleted > 0 {
                    tracing::debug!(
                        deleted,
                        topic = group.topic,
                        "redis: acked away claimed entries deleted by a trim"
                    );
                }
                group.admit_all(items).await;
            }
            Err(error) if error.message().contains("NOGROUP") => {
                let _ = group.create_group().await;
            }
            Err(error) => {
                tracing::debug!(%error, topic = group.topic, "redis: claiming failed; trying again")
            }
        }
    }
}

fn parse_claim(group: &Group, reply: Value) -> Result<(StreamId, Vec<Item>, i64)> {
    let mut parts = entry::array("XAUTOCLAIM", reply)?.into_iter();
    let (Some(next), Some(entries), Some(counts), Some(deleted)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::new(ErrorKind::Backend, "redis: short reply to the claim script"));
    };
    let next = entry::stream_id("XAUTOCLAIM", &next)?;
    let counts = entry::array("XAUTOCLAIM", counts)?;
    let items = entry::entries("XAUTOCLAIM", entries)?
        .into_iter()
        .zip(counts)
        .filter_map(|(e, count)| {
            let count = entry::int("XAUTOCLAIM", &count).unwrap_or(1);
            Some(group.item(e.id, e.fields?, u32::try_from(count).unwrap_or(u32::MAX)))
        })
        .collect();
    Ok((next, items, entry::int("XAUTOCLAIM", &deleted)?))
}

// ---------------------------------------------------------------------------------------------
// Subscriptions without a group

/// A subscription without a group: `XREAD` from a position, nothing to acknowledge. A nacked or
/// released delivery is handed out again by this subscription itself (it is not stored as
/// pending anywhere).
struct Solo {
    topic: String,
    flow: Flow,
    attempts: Mutex<HashMap<StreamId, u32>>,
}

pub(super) fn start_solo(
    inner: Arc<Inner>,
    topic: String,
    key: String,
    after: StreamId,
    max_in_flight: usize,
    (connection, reader): (MultiplexedConnection, i64),
) -> Subscription {
    let cancel = inner.cancel.child_token();
    let state = Arc::new(Solo {
        topic,
        flow: Flow::new(max_in_flight, cancel.clone()),
        attempts: Mutex::new(HashMap::new()),
    });
    state.flow.reader.store(reader, Ordering::Release);
    let watched = (inner.clone(), state.clone());
    tokio::spawn(async move { watched.1.flow.unblock_at_end(&watched.0).await });
    tokio::spawn(read_solo(inner, state.clone(), key, after, connection));
    let sink: Arc<dyn AckSink> = Arc::new(SoloSink(state.clone()));
    let guard = EndOnDrop(cancel);
    Subscription::new(futures_util::stream::unfold((state, sink, guard), |(state, sink, guard)| async move {
        let item = state.flow.next().await?;
        let acker = Acker::new(sink.clone(), item.id.token(), Some(item.message.clone()));
        Some((Ok(Delivery::new(item.message, item.attempt, acker)), (state, sink, guard)))
    }))
}

struct SoloSink(Arc<Solo>);

impl AckSink for SoloSink {
    fn settle(&self, token: Token, message: Option<Message>, how: Settle) -> OpFuture<'static> {
        let solo = &self.0;
        let id = StreamId::from_token(token);
        solo.flow.done(id);
        let again = match (&how, message) {
            (Settle::Nack(delay), Some(message)) => Some((message, delay.unwrap_or_default())),
            (Settle::Release, Some(message)) => Some((message, Duration::ZERO)),
            _ => None,
        };
        let Some((message, delay)) = again else {
            solo.attempts.lock().remove(&id);
            return OpFuture::ready(Ok(()));
        };
        let attempt = {
            let mut attempts = solo.attempts.lock();
            let attempt = attempts.entry(id).or_insert(1);
            *attempt += 1;
            *attempt
        };
        let solo = solo.clone();
        let requeue = move || {
            if solo.flow.admit(Item { id, message, attempt }).is_err() {
                solo.attempts.lock().remove(&id);
            }
        };
        if delay.is_zero() {
            requeue();
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                requeue();
            });
        }
        OpFuture::ready(Ok(()))
    }
}

async fn read_solo(
    inner: Arc<Inner>,
    solo: Arc<Solo>,
    key: String,
    mut after: StreamId,
    connection: MultiplexedConnection,
) {
    let config = &inner.config;
    let mut connection = Some(connection);
    let mut failures = 0u32;
    loop {
        let Some(room) = solo.flow.wait_room(config.batch).await else { break };
        let conn = match connection.as_mut() {
            Some(conn) => conn,
            None => match inner.reader_connection().await {
                Ok((conn, id)) => {
                    solo.flow.reader.store(id, Ordering::Release);
                    connection.insert(conn)
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, topic = solo.topic, "redis: reconnecting the reader failed");
                    if !pause(backoff(failures, config.max_backoff), &solo.flow.cancel).await {
                        break;
                    }
                    continue;
                }
            },
        };
        let reply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(room.min(config.batch))
            .arg("BLOCK")
            .arg(config.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(after.to_string())
            .query_async::<Value>(conn)
            .await;
        match reply.map_err(|e| redis_error(e, "XREAD")).and_then(|v| entry::read_reply("XREAD", v)) {
            Ok(entries) => {
                failures = 0;
                for Entry { id, fields } in entries {
                    after = after.max(id);
                    let Some(fields) = fields else { continue };
                    let item = Item { id, message: entry::decode(&solo.topic, id, fields), attempt: 1 };
                    if solo.flow.admit(item).is_err() {
                        break;
                    }
                }
            }
            Err(error) => {
                failures += 1;
                connection = None;
                tracing::warn!(%error, topic = solo.topic, failures, "redis: reading failed; trying again");
                if !pause(backoff(failures, config.max_backoff), &solo.flow.cancel).await {
                    break;
                }
            }
        }
    }
    solo.flow.queue.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let max = Duration::from_secs(5);
        assert!(
            backoff(1, max) >= Duration::from_millis(100) && backoff(1, max) <= Duration::from_millis(125)
        );
        assert!(backoff(2, max) >= Duration::from_millis(200));
        assert!(backoff(40, max) >= max && backoff(40, max) <= max.mul_f64(1.25));
    }

    #[test]
    fn slots_take_the_lowest_free_number() {
        let key = format!("test-{}", fastrand::u64(..));
        let a = Slot::take(key.clone());
        let b = Slot::take(key.clone());
        assert_eq!((a.number(), b.number()), (0, 1));
        drop(a);
        let c = Slot::take(key.clone());
        assert_eq!(c.number(), 0);
        let d = Slot::take(key);
        assert_eq!(d.number(), 2);
    }
}
