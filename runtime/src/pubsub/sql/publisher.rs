//! The publishing half of [`SqlPubSub`]: a publish is one transaction that reserves the topic's
//! next sequence numbers and inserts the messages.

use std::sync::atomic::Ordering;

use super::db::{backend_error, retrying};
use super::ops::dispatch;
use super::pubsub::SqlPubSub;
use super::stored::StoredMessage;
use crate::message::Message;
use crate::pubsub::{closed_error, OpFuture, Publisher};

impl Publisher for SqlPubSub {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        self.publish_batch(topic, vec![message])
    }

    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> OpFuture<'a> {
        if self.inner.publisher_closed.load(Ordering::Acquire) {
            return OpFuture::ready(Err(closed_error("SQL publisher is closed")));
        }
        OpFuture::boxed(async move {
            self.ensure_schema().await?;
            self.inner.check_sizes(&messages)?;
            let stored: Vec<_> = messages.into_iter().map(StoredMessage::new).collect();
            self.ensure_topic(topic).await?;
            let inner = &self.inner;
            // A deadlock or serialization failure: the database asks for another try.
            retrying(|| async {
                dispatch!(&inner.pool, (pool, ops) => {
                    match pool.acquire().await {
                        Ok(mut conn) => {
                            ops::publish(&mut conn, &inner.queries, topic, &stored, inner.insert_bytes()).await
                        }
                        Err(error) => Err(backend_error(error)),
                    }
                })
            })
            .await?;
            inner.wake(topic);
            Ok(())
        })
    }

    fn close(&self) -> OpFuture<'_> {
        self.inner.publisher_closed.store(true, Ordering::Release);
        OpFuture::boxed(self.inner.close_pool_if_done())
    }
}
