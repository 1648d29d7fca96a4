//! The publishing connection: a clean session whose event loop runs in its own task, and a
//! publish that returns once the broker acknowledged (PUBACK at QoS 1, PUBCOMP at QoS 2, sent at
//! QoS 0).
//!
//! rumqttc tells which packet id a publish got only through its events, in the order the
//! requests were taken from its channel. So publishers take turns (the `order` lock, never held
//! across an await): each queues its waiter, then hands its request to rumqttc, and the event
//! loop task gives the queued waiters their packet ids in that order. A publish refused because
//! rumqttc's channel is full takes its waiter back (no one else queued one meanwhile) and tries
//! again a moment later. A batch shares one [`Completion`], so its caller wakes once, when the
//! last acknowledgement arrives, not once per message.
//!
//! When the connection is lost, every waiter fails (the message may or may not have arrived: a
//! retry can duplicate it, at-least-once) and the requests rumqttc kept are dropped with them,
//! under the `order` lock, so that waiters and requests never get out of step.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ClientError, Event, EventLoop, Request};
use rumqttc::Outgoing;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::config::MqttConfig;
use super::connection::{self, mqtt_error, Backoff};
use crate::error::{Error, ErrorKind, Result};
use crate::pubsub::closed_error;

/// The outcome of a group of publishes (one, or a batch): done when every one of them was
/// acknowledged or failed; the first failure is the result.
pub(super) struct Completion {
    remaining: AtomicUsize,
    failure: Mutex<Option<Error>>,
    waker: AtomicWaker,
}

impl Completion {
    fn new(count: usize) -> Arc<Self> {
        Arc::new(Completion {
            remaining: AtomicUsize::new(count),
            failure: Mutex::new(None),
            waker: AtomicWaker::new(),
        })
    }

    fn settle(&self, result: Result<()>) {
        if let Err(error) = result {
            self.failure.lock().get_or_insert(error);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }

    /// Publishes counted but never handed over (the publisher closed, or rumqttc refused them).
    fn forget(&self, count: usize) {
        if count > 0 && self.remaining.fetch_sub(count, Ordering::AcqRel) == count {
            self.waker.wake();
        }
    }

    /// Waits until every publish of the group is settled.
    pub(super) async fn wait(&self) -> Result<()> {
        poll_fn(|cx| {
            if self.remaining.load(Ordering::Acquire) == 0 {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.remaining.load(Ordering::Acquire) == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        match self.failure.lock().take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

type Waiter = Arc<Completion>;

/// What publishers and the event loop task share.
struct Shared {
    /// Held by a publisher while it queues a waiter and hands its request to rumqttc, and by the
    /// event loop task while it drops both after a lost connection: keeps them in step.
    order: Mutex<()>,
    /// Waiters of requests not yet written, in channel order: each with how many requests it
    /// still waits for (a batch queues its completion once, for all its requests).
    queued: Mutex<VecDeque<(Waiter, usize)>>,
    /// Publishes queued and not yet settled.
    outstanding: AtomicUsize,
    closed: AtomicBool,
    /// The broker's Maximum Packet Size, if it announced one (0: none).
    server_max: AtomicUsize,
}

impl Shared {
    /// The waiter of the next request written.
    fn next_waiter(&self) -> Option<Waiter> {
        let mut queued = self.queued.lock();
        let (waiter, count) = queued.front_mut()?;
        *count -= 1;
        if *count > 0 {
            return Some(waiter.clone());
        }
        queued.pop_front().map(|(waiter, _)| waiter)
    }

    /// Takes back `unsent` requests of the last waiter queued, which were not handed over.
    fn unqueue(&self, unsent: usize) {
        let mut queued = self.queued.lock();
        if let Some((_, count)) = queued.back_mut() {
            *count -= unsent;
            if *count == 0 {
                queued.pop_back();
            }
        }
        self.outstanding.fetch_sub(unsent, Ordering::AcqRel);
    }

    fn settle(&self, waiter: Waiter, result: Result<()>) {
        waiter.settle(result);
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The event loop task's own state: written publishes by packet id.
#[derive(Default)]
struct Inflight {
    by_pkid: HashMap<u16, Waiter>,
    /// The waiter of a publish rumqttc holds back on a packet id collision.
    collided: Option<Waiter>,
}

impl Inflight {
    fn complete(&mut self, shared: &Shared, pkid: u16, result: Result<()>) {
        if let Some(waiter) = self.by_pkid.remove(&pkid) {
            shared.settle(waiter, result);
        }
    }

    /// Fails every waiter; the caller holds `order`.
    fn fail_all(&mut self, shared: &Shared, error: &Error) {
        let queued: Vec<(Waiter, usize)> = shared.queued.lock().drain(..).collect();
        let queued = queued.into_iter().flat_map(|(waiter, count)| std::iter::repeat_n(waiter, count));
        let written = self.by_pkid.drain().map(|(_, waiter)| waiter);
        for waiter in queued.chain(written).chain(self.collided.take()) {
            shared.settle(waiter, Err(Error::new(error.kind(), error.message().to_owned())));
        }
    }
}

/// Where a group of publishes goes, and how.
pub(super) struct Target<'a> {
    pub(super) topic: &'a str,
    pub(super) qos: QoS,
    pub(super) retain: bool,
}

/// The publishing connection.
pub(super) struct PubConn {
    client: AsyncClient,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl PubConn {
    /// Connects; fails when the first connection attempt does.
    pub(super) async fn connect(config: &MqttConfig, client_id: String) -> Result<Self> {
        let session =
            connection::Session { client_id, clean_start: true, expiry: None, receive_maximum: 100 };
        let (client, eventloop) = connection::client(config, &session);
        let shared = Arc::new(Shared {
            order: Mutex::new(()),
            queued: Mutex::new(VecDeque::new()),
            outstanding: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            server_max: AtomicUsize::new(0),
        });
        let cancel = CancellationToken::new();
        let (ready, connected) = oneshot::channel();
        tokio::spawn(run(eventloop, shared.clone(), Backoff::new(config), cancel.clone(), ready));
        match connected.await {
            Ok(Ok(())) => Ok(PubConn { client, shared, cancel }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(closed_error("MQTT publisher stopped while connecting")),
        }
    }

    /// The broker's Maximum Packet Size, if it announced one.
    pub(super) fn server_max(&self) -> Option<usize> {
        match self.shared.server_max.load(Ordering::Relaxed) {
            0 => None,
            max => Some(max),
        }
    }

    /// Hands the publishes to the event loop, in order; the completion is done when the
    /// broker acknowledged them all. Waits (a millisecond at a time) while rumqttc's channel is
    /// full: a connection that is down, or more publishers than it holds.
    pub(super) async fn send(
        &self,
        target: Target<'_>,
        mut publishes: impl ExactSizeIterator<Item = (PublishProperties, Bytes)>,
    ) -> Result<Arc<Completion>> {
        let count = publishes.len();
        let done = Completion::new(count);
        let mut handed = 0;
        let mut carry = None;
        loop {
            match self.hand_over(&target, &mut carry, &mut publishes, &done, &mut handed) {
                Ok(true) => return Ok(done),
                Ok(false) if !self.cancel.is_cancelled() => {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Ok(false) => {
                    done.forget(count - handed);
                    return Err(closed_error("MQTT publisher is closed"));
                }
                Err(error) => {
                    done.forget(count - handed);
                    return Err(error);
                }
            }
        }
    }

    /// Hands over publishes until none is left (`true`) or the channel is full (`false`, the
    /// refused one in `carry`).
    fn hand_over(
        &self,
        target: &Target<'_>,
        carry: &mut Option<(PublishProperties, Bytes)>,
        publishes: &mut impl ExactSizeIterator<Item = (PublishProperties, Bytes)>,
        done: &Waiter,
        handed: &mut usize,
    ) -> Result<bool> {
        let _order = self.shared.order.lock();
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(closed_error("MQTT publisher is closed"));
        }
        // Queued once for all that are left, before the first is handed over (the event loop may
        // write it at once); what is not handed over is taken back.
        let left = usize::from(carry.is_some()) + publishes.len();
        let count = *handed + left;
        if left == 0 {
            return Ok(true);
        }
        self.shared.outstanding.fetch_add(left, Ordering::AcqRel);
        self.shared.queued.lock().push_back((done.clone(), left));
        while let Some((properties, payload)) = carry.take().or_else(|| publishes.next()) {
            let result = self.client.try_publish_with_properties(
                target.topic,
                target.qos,
                target.retain,
                payload,
                properties,
            );
            if result.is_ok() {
                *handed += 1;
                continue;
            }
            // Not handed over: take the rest back. Only publishers queue (one at a time, under
            // `order`), and the event loop takes waiters only for requests it wrote, in order:
            // the last entry is this one, and counts at least the requests not handed over.
            let unsent = count - *handed;
            self.shared.unqueue(unsent);
            return match result {
                Err(ClientError::TryRequest(Request::Publish(back)))
                | Err(ClientError::Request(Request::Publish(back))) => {
                    *carry = Some((back.properties.unwrap_or_default(), back.payload));
                    Ok(false)
                }
                Err(error) => Err(mqtt_error("publish", error)),
                Ok(()) => unreachable!("handled above"),
            };
        }
        Ok(true)
    }

    /// Refuses new publishes, waits (a while) for the ones in flight, disconnects.
    pub(super) async fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline && self.shared.outstanding.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let _ = self.client.try_disconnect();
        // The task ends once it wrote the DISCONNECT (or after a moment).
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            cancel.cancel();
        });
    }
}

impl Drop for PubConn {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn ack_result(ok: bool, reason: impl std::fmt::Debug) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Backend, format!("MQTT: the broker refused the message: {reason:?}")))
    }
}

async fn run(
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    mut backoff: Backoff,
    cancel: CancellationToken,
    ready: oneshot::Sender<Result<()>>,
) {
    let mut ready = Some(ready);
    let mut inflight = Inflight::default();
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        let event = tokio::select! {
            biased;
            () = &mut cancelled => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                backoff.reset();
                let server_max = connack.properties.as_ref().and_then(|p| p.max_packet_size);
                shared.server_max.store(server_max.map_or(0, |max| max as usize), Ordering::Relaxed);
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let waiter = inflight.collided.take().or_else(|| shared.next_waiter());
                if let Some(waiter) = waiter {
                    if pkid == 0 {
                        shared.settle(waiter, Ok(()));
                    } else {
                        inflight.by_pkid.insert(pkid, waiter);
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::AwaitAck(_))) => {
                inflight.collided = shared.next_waiter();
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let ok = matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers);
                inflight.complete(&shared, ack.pkid, ack_result(ok, ack.reason));
            }
            Ok(Event::Incoming(Packet::PubRec(rec))) => {
                let ok = matches!(rec.reason, PubRecReason::Success | PubRecReason::NoMatchingSubscribers);
                if !ok {
                    inflight.complete(&shared, rec.pkid, ack_result(false, rec.reason));
                }
            }
            Ok(Event::Incoming(Packet::PubComp(comp))) => inflight.complete(&shared, comp.pkid, Ok(())),
            Ok(Event::Incoming(Packet::Disconnect(disconnect))) => {
                tracing::warn!(reason = ?disconnect.reason_code, "MQTT: the broker disconnected the publisher");
            }
            Ok(_) => {}
            Err(error) => {
                let what = if ready.is_some() {
                    "connect"
                } else {
                    "connection lost before the broker acknowledged"
                };
                let error = mqtt_error(what, error);
                {
                    let _order = shared.order.lock();
                    if shared.closed.load(Ordering::Acquire)
                        && shared.outstanding.load(Ordering::Acquire) == 0
                    {
                        break;
                    }
                    inflight.fail_all(&shared, &error);
                    // Drop what rumqttc kept for the next connection (and the requests still in
                    // its channel): their waiters just failed.
                    eventloop.clean();
                    eventloop.pending.clear();
                }
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(error));
                    break;
                }
                tracing::warn!(%error, "MQTT publisher: reconnecting");
                if !backoff.wait(&cancel).await {
                    break;
                }
            }
        }
    }
    let _order = shared.order.lock();
    shared.closed.store(true, Ordering::Release);
    inflight.fail_all(&shared, &closed_error("MQTT publisher is closed"));
}
