//! A subscription in a consumer group: its reader (on a connection of its own), its claimer,
//! and the [`AckSink`] that settles its deliveries.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;

use super::entry::{self, Entry, StreamId};
use super::flow::{backoff, pause, redis_error, EndOnDrop, Flow, Item, Slot};
use super::scripts;
use super::shared::Inner;
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::pubsub::{AckSink, Acker, Delivery, OpFuture, Settle, Subscription, Token};

/// The idle time that gives an entry back: any subscription of the group claims it at its next
/// look (a year, in milliseconds).
const GIVE_BACK_IDLE_MS: u64 = 365 * 24 * 3600 * 1000;

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
    let batch = inner.config.batch;
    let state = Arc::new(Group {
        inner,
        topic,
        key,
        group,
        consumer,
        flow: Flow::new(max_in_flight, batch, cancel.clone()),
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
        let Some(room) = group.flow.wait_room().await else { break };
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
