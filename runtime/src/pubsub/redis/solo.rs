//! A subscription without a group: `XREAD` from a position; nothing is stored as pending, so a
//! nacked or released delivery is handed out again by the subscription itself.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::Value;

use super::entry::{self, Entry, StreamId};
use super::flow::{backoff, pause, redis_error, EndOnDrop, Flow, Item};
use super::shared::Inner;
use crate::message::Message;
use crate::pubsub::{AckSink, Acker, Delivery, OpFuture, Settle, Subscription, Token};

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
        flow: Flow::new(max_in_flight, inner.config.batch, cancel.clone()),
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
        let Some(room) = solo.flow.wait_room().await else { break };
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
