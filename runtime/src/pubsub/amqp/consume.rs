//! A subscription: a channel of its own with a prefetch, consuming the queue its topology
//! declared; attached again (new channel, declarations again) after the channel or the
//! connection closed. Deliveries taken on a channel that has since closed are stale: settling
//! one is refused here, never sent on the new channel (whose delivery tags mean other messages).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tokio_util::sync::CancellationToken;

use super::codec;
use super::link::{amqp_error, Link, Live};
use super::topology::{QueuePlan, Route, Topology};
use crate::error::{Error, ErrorKind, Result};
use crate::keys;
use crate::message::DeliveryInfo;
use crate::pubsub::{AckSink, Acker, Delivery, OpFuture, Settle, SubscribeOptions, Token};

/// One attachment: the channel, its consumer and what the topology planned.
struct Attached {
    _channel: lapin::Channel,
    consumer: lapin::Consumer,
    plan: Arc<QueuePlan>,
}

pub(crate) struct Consume {
    pub(crate) link: Arc<Link>,
    pub(crate) topology: Arc<dyn Topology>,
    pub(crate) topic: String,
    pub(crate) options: SubscribeOptions,
    pub(crate) cancel: CancellationToken,
    attached: Option<Attached>,
    /// Counts attachments; a delivery remembers the one it came on.
    epoch: Arc<AtomicU64>,
    /// Failed attachments in a row (the backoff), kept across calls: a subscription whose
    /// declaration keeps failing reports it at a slowing pace, not in a tight loop.
    failures: u32,
}

impl Consume {
    /// Attaches once (so that declarations fail here, at subscribe).
    pub(crate) async fn start(
        link: Arc<Link>,
        topology: Arc<dyn Topology>,
        topic: &str,
        options: SubscribeOptions,
        cancel: CancellationToken,
    ) -> Result<Self> {
        let mut consume = Consume {
            link,
            topology,
            topic: topic.to_owned(),
            options,
            cancel,
            attached: None,
            epoch: Arc::new(AtomicU64::new(0)),
            failures: 0,
        };
        let live = consume.link.live().await?;
        consume.attach(&live).await?;
        Ok(consume)
    }

    /// Declares, opens a channel and consumes, within [`AmqpConfig::connect_timeout`]
    /// (past it the connection is dropped and made again).
    ///
    /// [`AmqpConfig::connect_timeout`]: super::AmqpConfig::connect_timeout
    async fn attach(&mut self, live: &Live) -> Result<()> {
        let link = self.link.clone();
        let limit = link.config.connect_timeout;
        let attached = link.bounded(live, limit, "attaching a subscription", self.open(live)).await?;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.attached = Some(attached);
        Ok(())
    }

    async fn open(&self, live: &Live) -> Result<Attached> {
        let declarer = super::topology::Declarer::open(&live.connection).await?;
        let plan = self.topology.declare_subscribe(&declarer, &self.topic, &self.options).await;
        declarer.close().await;
        let plan = plan?;
        let channel = live.connection.create_channel().await.map_err(amqp_error)?;
        let prefetch = self
            .options
            .max_in_flight
            .map_or(self.link.config.prefetch, |max| u16::try_from(max.max(1)).unwrap_or(u16::MAX));
        channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(amqp_error)?;
        let consumer = channel
            .basic_consume(
                plan.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp_error)?;
        Ok(Attached { _channel: channel, consumer, plan: Arc::new(plan) })
    }

    pub(crate) async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if self.cancel.is_cancelled() {
                return None;
            }
            let Some(attached) = self.attached.as_mut() else {
                if self.failures > 0 {
                    let backoff =
                        Duration::from_millis(100 << self.failures.min(6)).min(self.link.config.max_backoff);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.cancel.cancelled() => return None,
                    }
                }
                let live = self.link.live_or_wait(&self.cancel).await?;
                match self.attach(&live).await {
                    Ok(()) => tracing::debug!(
                        topic = self.topic,
                        generation = live.generation,
                        "AMQP: subscription attached again"
                    ),
                    Err(error) => {
                        self.failures += 1;
                        tracing::warn!(%error, topic = self.topic, "AMQP: re-attaching the subscription failed");
                        if error.kind() == ErrorKind::Config {
                            return Some(Err(error));
                        }
                    }
                }
                continue;
            };
            let item = tokio::select! {
                item = attached.consumer.next() => item,
                () = self.cancel.cancelled() => return None,
            };
            match item {
                Some(Ok(delivery)) if !delivery.acker.usable() => {
                    // Buffered before its channel closed: the broker has requeued it already.
                    tracing::debug!(topic = self.topic, "AMQP: dropping a delivery of a closed channel");
                }
                Some(Ok(delivery)) => {
                    self.failures = 0;
                    return Some(Ok(self.delivery(delivery)));
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, topic = self.topic, "AMQP: consumer failed; re-attaching");
                    self.detach();
                    self.failures += 1;
                }
                None => {
                    tracing::info!(
                        topic = self.topic,
                        "AMQP: consumer ended (channel closed or cancelled); re-attaching"
                    );
                    self.detach();
                    self.failures += 1;
                }
            }
        }
    }

    fn detach(&mut self) {
        // Deliveries of the old channel are stale from now on.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.attached = None;
    }

    fn delivery(&self, delivery: lapin::message::Delivery) -> Delivery {
        let plan = self.attached.as_ref().map(|a| a.plan.clone()).expect("attached");
        let lapin::message::Delivery {
            delivery_tag, routing_key, redelivered, properties, data, acker, ..
        } = delivery;
        let payload = Bytes::from(data);
        let decoded = codec::decode(&properties, payload.clone());
        // Quorum queues count earlier deliveries; classic ones only flag a redelivery.
        let here = decoded.delivery_count.unwrap_or(u64::from(redelivered));
        let attempt = decoded.prior_attempts + 1 + here;
        let mut info = DeliveryInfo::new().topic(routing_key.as_str());
        if let Some(timestamp) = decoded.timestamp {
            info = info.timestamp(timestamp);
        }
        let sink = AmqpAck(Arc::new(AckInner {
            link: self.link.clone(),
            acker,
            epoch: self.epoch.load(Ordering::Acquire),
            current: self.epoch.clone(),
            plan,
            properties,
            payload,
            attempt,
        }));
        let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
        Delivery::new(decoded.message, attempt, Acker::new(Arc::new(sink), Token::new(delivery_tag), None))
            .with_info(info)
    }
}

/// Settles one delivery on the channel it came on.
struct AmqpAck(Arc<AckInner>);

struct AckInner {
    link: Arc<Link>,
    acker: lapin::Acker,
    epoch: u64,
    current: Arc<AtomicU64>,
    plan: Arc<QueuePlan>,
    properties: BasicProperties,
    payload: Bytes,
    attempt: u64,
}

/// How often a settle in flight looks whether its channel has ended (see `AckInner::sent`).
const SETTLE_TICK: Duration = Duration::from_millis(100);

fn stale() -> Error {
    Error::new(
        ErrorKind::Backend,
        "AMQP: stale delivery: the channel it came on has closed (a reconnection); the broker gives \
         the message out again, so it is not settled on the new channel",
    )
}

fn settled(result: lapin::Result<bool>) -> Result<()> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::new(
            ErrorKind::Backend,
            "AMQP: delivery already settled, or its channel closed (it will be delivered again)",
        )),
        Err(error) => Err(amqp_error(error)),
    }
}

impl AckInner {
    /// Waits for a settle frame to go out: until its channel is known to have ended, and at most
    /// [`AmqpConfig::connect_timeout`].
    ///
    /// lapin resolves a settle once its frame is written; when the connection dies at that
    /// moment (a server restart) the frame may be neither written nor failed, and an unbounded
    /// wait held the consumer (and every delivery after it) for good. Either way the settle
    /// fails: the channel is gone, so the broker gives the message out again.
    ///
    /// [`AmqpConfig::connect_timeout`]: super::AmqpConfig::connect_timeout
    async fn sent(
        &self,
        what: &str,
        op: impl std::future::Future<Output = lapin::Result<bool>>,
    ) -> Result<()> {
        let limit = self.link.config.connect_timeout;
        // One timer for both bounds: every tick looks whether lapin has poisoned the channel's
        // ackers (it learnt the channel ended), and the last tick is the limit.
        let given_up = async {
            let mut left = limit;
            loop {
                let tick = left.min(SETTLE_TICK);
                tokio::time::sleep(tick).await;
                left -= tick;
                if self.acker.poisoned() {
                    tracing::debug!(queue = %self.plan.queue, "AMQP: {what} given up: its channel ended meanwhile");
                    return stale();
                }
                if left.is_zero() {
                    tracing::warn!(queue = %self.plan.queue, "AMQP: {what} was not sent within {limit:?}; the connection is presumed lost");
                    return Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "AMQP: {what} was not sent within {limit:?} (the connection is presumed lost; \
                             the broker gives the message out again)"
                        ),
                    );
                }
            }
        };
        tokio::select! {
            biased;
            result = op => settled(result),
            error = given_up => Err(error),
        }
    }

    fn is_stale(&self) -> bool {
        self.current.load(Ordering::Acquire) != self.epoch || !self.acker.usable()
    }

    async fn requeue(&self) -> Result<()> {
        self.sent("a requeue", self.acker.nack(BasicNackOptions { multiple: false, requeue: true })).await
    }

    /// Publishes a copy to `route` (confirmed), then acks the delivery.
    async fn forward(&self, route: &Route, extra: &[(&str, &str)]) -> Result<()> {
        let live = self.link.live().await?;
        let properties = codec::forward(&self.properties, self.attempt, extra);
        self.link.publish_confirmed(&live, route, &self.payload, properties).await?;
        if self.is_stale() {
            // The copy is out; the original comes back too (at-least-once: a duplicate).
            return Err(stale());
        }
        self.sent("an ack", self.acker.ack(Default::default())).await
    }

    async fn delayed(self: Arc<Self>, delay: Duration) -> Result<()> {
        let class = self.link.config.retry_class(delay).filter(|_| self.plan.retry_queues);
        let Some(class) = class else {
            // No retry queue: wait in the process, holding the delivery (it counts against the
            // prefetch), then requeue.
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let result = if self.is_stale() { Err(stale()) } else { self.requeue().await };
                if let Err(error) = result {
                    tracing::warn!(%error, "AMQP: requeue after a delayed nack failed");
                }
            });
            return Ok(());
        };
        let live = self.link.live().await?;
        let queue = self.plan.queue.clone();
        let name = super::topology::retry_queue_name(&queue, class);
        let declare = self.link.declare_once(&live, ("retry", name.clone()), |declarer| async move {
            let result = declarer.retry_queue(&queue, class).await.map(drop);
            declarer.close().await;
            result
        });
        let limit = self.link.config.connect_timeout;
        self.link.bounded(&live, limit, "declaring a retry queue", declare).await?;
        self.forward(&Route::new("", name), &[]).await
    }

    async fn settle_as(self: Arc<Self>, how: Settle) -> Result<()> {
        if self.is_stale() {
            return Err(stale());
        }
        match how {
            Settle::Ack => self.sent("an ack", self.acker.ack(Default::default())).await,
            Settle::Nack(Some(delay)) if !delay.is_zero() => self.delayed(delay).await,
            Settle::Nack(_) | Settle::Release => self.requeue().await,
            Settle::Reject(reason) => match self.plan.dead_letter.clone() {
                Some(route) => self.forward(&route, &[(keys::poison::REASON, &reason)]).await,
                None => self.sent("a reject", self.acker.reject(BasicRejectOptions { requeue: false })).await,
            },
        }
    }
}

impl AckSink for AmqpAck {
    fn settle(
        &self,
        _token: Token,
        _message: Option<crate::message::Message>,
        how: Settle,
    ) -> OpFuture<'static> {
        OpFuture::boxed(self.0.clone().settle_as(how))
    }
}
