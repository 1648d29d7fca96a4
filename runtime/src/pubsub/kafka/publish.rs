//! The producer: idempotent (`enable.idempotence`, so `acks=all` and librdkafka's own retries
//! never store a message twice or out of order), every publish waiting for its delivery report.

use std::collections::VecDeque;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;

use super::codec::{self, Record};
use super::config::KafkaConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::pubsub::check_size;

/// What the record framing takes of `message.max.bytes` besides payload, key and headers.
pub(super) const FRAMING: usize = 256;

/// librdkafka's logs and errors for the producer.
pub(super) struct ProducerCtx;

impl ClientContext for ProducerCtx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        super::log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka producer error");
    }
}

/// A connection's producer. Cheap to clone.
#[derive(Clone)]
pub(super) struct Producer {
    pub(super) inner: FutureProducer<ProducerCtx>,
    timeout: Duration,
    max_message_bytes: usize,
}

impl Producer {
    pub(super) fn new(config: &KafkaConfig) -> Result<Self> {
        let timeout_ms = config.publish_timeout.as_millis().clamp(1, i32::MAX as u128).to_string();
        let inner = config
            .client_config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("message.timeout.ms", timeout_ms.as_str()),
                ("queue.buffering.max.messages", "1000000"),
                ("linger.ms", "5"),
            ])
            .create_with_context(ProducerCtx)
            .map_err(|error| Error::with_source(ErrorKind::Config, error).context("kafka producer"))?;
        Ok(Producer { inner, timeout: config.publish_timeout, max_message_bytes: config.max_message_bytes })
    }

    /// The largest payload a message with small headers can have.
    pub(super) fn max_payload(&self) -> usize {
        self.max_message_bytes.saturating_sub(FRAMING + 1024)
    }

    fn check(&self, record: &Record) -> Result<()> {
        check_size(
            "payload",
            record.payload.len(),
            self.max_payload(),
            "KafkaConfig::max_message_bytes, less 1 280 bytes for key, headers and record framing",
        )?;
        check_size(
            "payload, key and headers",
            record.size,
            self.max_message_bytes.saturating_sub(FRAMING),
            "KafkaConfig::max_message_bytes, less 256 bytes of record framing",
        )
    }

    /// Publishes one message and waits for the broker to store it; returns its partition and
    /// offset. `attempt` is written in the attempt header (a republished nack).
    pub(super) async fn send(
        &self,
        topic: &str,
        message: Message,
        attempt: Option<u32>,
    ) -> Result<(i32, i64)> {
        let mut record = codec::encode(message, attempt);
        self.check(&record)?;
        let headers = std::mem::replace(&mut record.headers, OwnedHeaders::new_with_capacity(0));
        let mut next = future_record(topic, &record, headers);
        let future = loop {
            match self.inner.send_result(next) {
                Ok(future) => break future,
                Err((error, back)) if is_queue_full(&error) => {
                    next = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(publish_error(error, topic, self.timeout, false)),
            }
        };
        delivered(future, topic, self.timeout).await
    }

    /// Publishes `messages` in order (librdkafka batches them), then waits for every delivery
    /// report.
    pub(super) async fn send_batch(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        let mut records: Vec<Record> = messages.into_iter().map(|m| codec::encode(m, None)).collect();
        for record in &records {
            self.check(record)?;
        }
        let mut pending: VecDeque<DeliveryFuture> = VecDeque::with_capacity(records.len());
        for record in &mut records {
            let headers = std::mem::replace(&mut record.headers, OwnedHeaders::new_with_capacity(0));
            let mut next = future_record(topic, record, headers);
            loop {
                match self.inner.send_result(next) {
                    Ok(future) => {
                        pending.push_back(future);
                        break;
                    }
                    Err((error, back)) if is_queue_full(&error) => {
                        next = back;
                        match pending.pop_front() {
                            Some(first) => {
                                delivered(first, topic, self.timeout).await?;
                            }
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err((error, _)) => {
                        return Err(publish_error(error, topic, self.timeout, !pending.is_empty()))
                    }
                }
            }
        }
        for future in pending {
            delivered(future, topic, self.timeout).await?;
        }
        Ok(())
    }

    /// Waits (blocking) until every message sent was delivered or failed, at most `timeout`.
    pub(super) fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner.flush(Timeout::After(timeout)).map_err(|error| {
            Error::with_source(ErrorKind::Timeout, error).context(
                "kafka producer flush: some messages were not confirmed and may not have been stored",
            )
        })
    }
}

fn future_record<'a>(
    topic: &'a str,
    record: &'a Record,
    headers: OwnedHeaders,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut future = FutureRecord::<[u8], [u8]>::to(topic).payload(&record.payload[..]).headers(headers);
    future.key = record.key.as_deref().map(str::as_bytes);
    future
}

fn is_queue_full(error: &KafkaError) -> bool {
    matches!(error, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
}

async fn delivered(future: DeliveryFuture, topic: &str, timeout: Duration) -> Result<(i32, i64)> {
    match future.await {
        Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
        Ok(Err((error, _))) => Err(publish_error(error, topic, timeout, true)),
        Err(_) => Err(Error::new(
            ErrorKind::Closed,
            format!("publish to {topic}: the producer closed before the broker answered; the message may have been stored"),
        )),
    }
}

/// The error of a failed publish, saying whether the message may have been stored (`sent`: it
/// reached librdkafka's queue, and its retries may have stored it).
fn publish_error(error: KafkaError, topic: &str, timeout: Duration, sent: bool) -> Error {
    let code = error.rdkafka_error_code();
    match code {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            Error::with_source(ErrorKind::Config, error)
                .context(format!("publish to {topic}: the broker refuses a message this large"))
                .into_permanent()
        }
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            Error::with_source(ErrorKind::Config, error).context(format!(
                "publish to {topic}: no such topic (create it, or set KafkaConfig::create_topics); not stored"
            ))
        }
        Some(RDKafkaErrorCode::MessageTimedOut) => Error::with_source(ErrorKind::Timeout, error).context(format!(
            "publish to {topic} not confirmed within {timeout:?} (KafkaConfig::publish_timeout): the message may have been stored"
        )),
        _ if sent => Error::with_source(ErrorKind::Backend, error)
            .context(format!("publish to {topic} failed: the message may have been stored")),
        _ => Error::with_source(ErrorKind::Backend, error).context(format!("publish to {topic} failed: not stored")),
    }
}
