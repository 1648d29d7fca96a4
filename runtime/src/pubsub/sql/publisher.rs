//! The publishing half of [`SqlPubSub`]: a publish is one transaction that reserves the topic's
//! next sequence numbers and inserts the messages.

use std::sync::atomic::Ordering;

use std::time::{Duration, Instant};

use super::db::{backend_error, is_retryable, is_transient, RETRY_ATTEMPTS};
use super::ops::{dispatch, Unknown};
use super::pubsub::SqlPubSub;
use super::stored::StoredMessage;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::pubsub::{closed_error, OpFuture, Publisher};

impl SqlPubSub {
    /// One publish transaction, tried again on transient failures for up to
    /// `SqlConfig::publish_retry_for` (deadlocks a few times in any case). After a commit whose
    /// outcome is unknown, the first message is looked up before another try (at its sequence
    /// number, or after the last one this process saw stored in the topic): found with its id,
    /// the batch was stored (all of it: one transaction), and is not again.
    async fn publish_retrying(&self, topic: &str, stored: &[StoredMessage]) -> Result<()> {
        let inner = &self.inner;
        let retry_for = inner.config.publish_retry_for;
        let started = Instant::now();
        let mut tries = 0_u32;
        // Where the batch of a commit whose outcome is not known yet would be.
        let mut unknown: Option<Unknown> = None;
        loop {
            tries += 1;
            if let Some(unknown) = unknown {
                let found = match (unknown, stored.first()) {
                    (Unknown::At(first), _) => {
                        dispatch!(&inner.pool, (pool, ops) => ops::stored_id(pool, &inner.queries, topic, first).await)
                    }
                    (Unknown::After, Some(message)) => {
                        let after = self.last_seen(topic);
                        dispatch!(&inner.pool, (pool, ops) => {
                            ops::stored_after(pool, &inner.queries, topic, after, &message.id).await
                        })
                    }
                    (Unknown::After, None) => Ok(None),
                };
                match found {
                    Ok(Some(id)) if stored.first().is_some_and(|m| m.id == id) => return Ok(()),
                    // Not stored: try again.
                    Ok(_) => {}
                    // Still away: look again after the pause.
                    Err(error) if is_transient(&error) && started.elapsed() < retry_for => {
                        backoff_for(tries, retry_for, started).await;
                        continue;
                    }
                    Err(error) => return Err(give_up(topic, error, tries, started, true)),
                }
            }
            let outcome = dispatch!(&inner.pool, (pool, ops) => {
                match pool.acquire().await {
                    Ok(mut conn) => {
                        ops::publish_committing(&mut conn, &inner.queries, topic, stored, inner.insert_bytes(), true).await
                    }
                    Err(error) => Err((backend_error(error), None)),
                }
            });
            let (error, committing) = match outcome {
                Ok(last) => {
                    self.saw_stored(topic, last);
                    return Ok(());
                }
                Err(failure) => failure,
            };
            let deadlock = is_retryable(&error) && tries < RETRY_ATTEMPTS;
            let transient = is_transient(&error) && started.elapsed() < retry_for;
            if !(deadlock || transient) {
                return Err(give_up(topic, error, tries, started, committing.is_some()));
            }
            tracing::debug!(topic, %error, tries, "SQL backend: publish failed; retrying");
            unknown = committing;
            backoff_for(tries, retry_for, started).await;
        }
    }
}

/// The pause before another try: growing from a few milliseconds to one second, and never past
/// the retry time.
async fn backoff_for(tries: u32, retry_for: Duration, started: Instant) {
    let pause = Duration::from_millis(2u64 << tries.min(9)).min(Duration::from_secs(1));
    tokio::time::sleep(pause.min(retry_for.saturating_sub(started.elapsed()))).await;
}

/// The error a publish finally returns: what failed, after how many tries, and whether the
/// messages may have been stored.
fn give_up(topic: &str, error: Error, tries: u32, started: Instant, maybe_stored: bool) -> Error {
    if tries == 1 && !maybe_stored {
        return error;
    }
    let stored = if maybe_stored {
        "they may have been stored (the outcome of the last commit is unknown)"
    } else {
        "they were not stored"
    };
    error.context(format_args!(
        "publish to `{topic}` failed after {tries} tries in {:.1?}; {stored}",
        started.elapsed()
    ))
}

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
            self.check_layout(topic).await?;
            // One transaction per partition, in the order of their numbers.
            let parts = self.split(topic, messages, Message::key);
            let count = parts.len();
            for (done, (name, messages)) in parts.into_iter().enumerate() {
                let stored: Vec<_> = messages.into_iter().map(StoredMessage::new).collect();
                let published = async {
                    self.ensure_topic(&name).await?;
                    self.publish_retrying(&name, &stored).await
                };
                if let Err(error) = published.await {
                    return Err(if done == 0 {
                        error
                    } else {
                        error.context(format_args!(
                            "the batch's messages of {done} of its {count} partitions were stored"
                        ))
                    });
                }
                self.inner.wake(&name);
            }
            Ok(())
        })
    }

    fn close(&self) -> OpFuture<'_> {
        self.inner.publisher_closed.store(true, Ordering::Release);
        OpFuture::boxed(self.inner.close_pool_if_done())
    }
}
