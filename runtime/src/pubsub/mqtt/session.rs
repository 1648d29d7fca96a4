//! A receiving session: one MQTT connection for one subscription without a group, or for all of
//! this process's subscriptions of one group (they take deliveries from one queue), its event
//! loop in its own task, and the [`AckSink`] that sends its PUBACKs in arrival order.
//!
//! Deliveries are numbered per connection (a *generation*) in a [`Watermark`]; a settle releases
//! the PUBACKs of the longest settled run at the front, in order, as MQTT requires. When the
//! connection ends (lost, or resumed on purpose for a nack) the generation changes: settling a
//! delivery of an older one is an error the router logs, and the broker sends those messages
//! again on the resumed session.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, RetainForwardRule, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio::sync::{mpsc, oneshot, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use super::codec;
use super::config::MqttConfig;
use super::connection::{self, mqtt_error, Backoff, Claim};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{DeliveryInfo, MessageId};
use crate::pubsub::watermark::{Seq, Settled, Watermark};
use crate::pubsub::{closed_error, AckSink, Acker, Delivery, OpFuture, Settle, Token};

/// What a released delivery needs for its PUBACK, and its id (to forget its attempt count).
type Pending = (u16, QoS, MessageId);

struct Marks {
    generation: u64,
    watermark: Watermark<Pending>,
    /// Released PUBACKs not yet in rumqttc's request channel (it was full), in order.
    outbox: VecDeque<(u16, QoS)>,
}

impl Marks {
    /// Moves PUBACKs from the outbox into rumqttc's channel, in order, while it has room.
    fn flush(&mut self, client: &AsyncClient) {
        while let Some(&(pkid, qos)) = self.outbox.front() {
            let mut publish = Publish::new("", qos, Bytes::new(), None);
            publish.pkid = pkid;
            if client.try_ack(&publish).is_err() {
                // Full: the event loop task flushes again after its next event. (Or closed: the
                // broker sends the message again when the session resumes.)
                break;
            }
            self.outbox.pop_front();
        }
    }
}

/// The settling side of a session, shared by its deliveries.
struct Sink {
    client: AsyncClient,
    marks: Mutex<Marks>,
    /// Deliveries of unacknowledged messages seen by this session, by id: the attempt count of a
    /// redelivery (MQTT marks one with DUP but does not count).
    attempts: Mutex<HashMap<MessageId, u32>>,
    /// Asks the event loop task to resume the session (reconnect), for this generation.
    resume: mpsc::UnboundedSender<u64>,
    closed: AtomicBool,
}

impl Sink {
    fn ack(&self, generation: u64, seq: u64) -> Result<()> {
        let mut marks = self.marks.lock();
        if marks.generation != generation {
            return Err(Error::new(
                ErrorKind::Backend,
                "MQTT: the connection this delivery came on has ended; the broker sends the message \
                 again when the session resumes",
            ));
        }
        match marks.watermark.settle(Seq::from_raw(seq)) {
            Settled::Unknown => Err(Error::new(ErrorKind::Backend, "MQTT: delivery already settled")),
            Settled::Released(released) => {
                let mut attempts = self.attempts.lock();
                for (pkid, qos, id) in released {
                    attempts.remove(&id);
                    if qos != QoS::AtMostOnce {
                        marks.outbox.push_back((pkid, qos));
                    }
                }
                drop(attempts);
                // Under the marks lock, so PUBACKs enter the channel in release order.
                marks.flush(&self.client);
                Ok(())
            }
        }
    }

    fn redeliver(self: &Arc<Self>, generation: u64, delay: Option<std::time::Duration>) -> Result<()> {
        if self.closed.load(Ordering::Acquire) || self.marks.lock().generation != generation {
            // Redelivered anyway when the session resumes.
            return Ok(());
        }
        match delay.filter(|delay| !delay.is_zero()) {
            None => {
                let _ = self.resume.send(generation);
            }
            Some(delay) => {
                let sink = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = sink.resume.send(generation);
                });
            }
        }
        Ok(())
    }

    /// Starts a new generation: earlier deliveries can no longer be settled.
    fn next_generation(&self) {
        let mut marks = self.marks.lock();
        marks.generation += 1;
        marks.watermark.reset();
        // PUBACKs of the old connection's packet ids mean nothing on the next one.
        marks.outbox.clear();
    }
}

/// The [`AckSink`] of a session's deliveries.
struct SinkHandle(Arc<Sink>);

impl AckSink for SinkHandle {
    fn settle(
        &self,
        token: Token,
        _message: Option<crate::message::Message>,
        how: Settle,
    ) -> OpFuture<'static> {
        let (generation, seq) = token.pair_parts();
        OpFuture::ready(match how {
            // MQTT has no dead letter: a rejected message is acknowledged (the router published
            // it to its poison topic first).
            Settle::Ack | Settle::Reject(_) => self.0.ack(generation, seq),
            Settle::Nack(delay) => self.0.redeliver(generation, delay),
            Settle::Release => self.0.redeliver(generation, None),
            #[allow(unreachable_patterns)]
            _ => self.0.redeliver(generation, None),
        })
    }
}

/// How a session subscribes.
pub(super) struct Spec {
    pub(super) session: connection::Session,
    /// The filter: the topic, or `$share/<group>/<topic>`.
    pub(super) filter: String,
    pub(super) qos: QoS,
    pub(super) retained: bool,
    /// Attach the concrete topic to each delivery (a pattern subscription).
    pub(super) pattern: bool,
    /// The claim on the client id, for a group's session.
    pub(super) claim: Option<(Arc<Claim>, OwnedMutexGuard<()>)>,
}

/// A running session. Dropping it ends the connection (the broker keeps a group's session).
pub(super) struct SessionHandle {
    deliveries: flume::Receiver<Result<Delivery>>,
    cancel: CancellationToken,
    claim: Option<Arc<Claim>>,
}

impl SessionHandle {
    /// Connects and subscribes; returns once the broker confirmed the subscription (or resumed
    /// the session that has it).
    pub(super) async fn open(
        config: &MqttConfig,
        mut spec: Spec,
        parent: &CancellationToken,
    ) -> Result<Self> {
        let (client, eventloop) = connection::client(config, &spec.session);
        let (resume, resumes) = mpsc::unbounded_channel();
        let sink = Arc::new(Sink {
            client: client.clone(),
            marks: Mutex::new(Marks { generation: 0, watermark: Watermark::new(), outbox: VecDeque::new() }),
            attempts: Mutex::new(HashMap::new()),
            resume,
            closed: AtomicBool::new(false),
        });
        let (sender, deliveries) = flume::unbounded();
        let cancel = parent.child_token();
        let (ready, subscribed) = oneshot::channel();
        let claim = spec.claim.as_ref().map(|(claim, _)| claim.clone());
        let guard = spec.claim.take().map(|(_, guard)| guard);
        let task = Task {
            eventloop,
            client,
            sink,
            sender,
            resumes,
            cancel: cancel.clone(),
            backoff: Backoff::new(config),
            resume_backoff: Backoff::new(config),
            last_resume: None,
            ready: Some(ready),
            spec,
        };
        tokio::spawn(task.run(guard));
        match subscribed.await {
            Ok(Ok(())) => Ok(SessionHandle { deliveries, cancel, claim }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(closed_error("MQTT subscriber closed while subscribing")),
        }
    }

    /// The deliveries, shared by the session's subscriptions.
    pub(super) fn deliveries(&self) -> flume::Receiver<Result<Delivery>> {
        self.deliveries.clone()
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        if let Some(claim) = &self.claim {
            claim.closing();
        }
        self.cancel.cancel();
    }
}

struct Task {
    eventloop: EventLoop,
    client: AsyncClient,
    sink: Arc<Sink>,
    sender: flume::Sender<Result<Delivery>>,
    resumes: mpsc::UnboundedReceiver<u64>,
    cancel: CancellationToken,
    backoff: Backoff,
    /// Paces session resumes for nacks: one right away, then, while nacks keep coming within a
    /// second of the last resume, pauses growing like the reconnection backoff (a handler that
    /// fails every message must not turn into a reconnection storm).
    resume_backoff: Backoff,
    last_resume: Option<tokio::time::Instant>,
    ready: Option<oneshot::Sender<Result<()>>>,
    spec: Spec,
}

/// What woke the event loop task (one at a time, on its stack: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Step {
    Event(std::result::Result<Event, rumqttc::v5::ConnectionError>),
    Resume(u64),
    Stop,
}

impl Task {
    async fn run(mut self, guard: Option<OwnedMutexGuard<()>>) {
        let handle: Arc<dyn AckSink> = Arc::new(SinkHandle(self.sink.clone()));
        let mut subscribing = false;
        loop {
            let step = tokio::select! {
                biased;
                () = self.cancel.cancelled() => Step::Stop,
                Some(generation) = self.resumes.recv() => Step::Resume(generation),
                event = self.eventloop.poll() => Step::Event(event),
            };
            {
                let mut marks = self.sink.marks.lock();
                if !marks.outbox.is_empty() {
                    marks.flush(&self.client);
                }
            }
            match step {
                Step::Stop => break,
                Step::Resume(generation) => {
                    if self.sink.marks.lock().generation == generation {
                        // A nack: resume the session, and the broker sends every unacknowledged
                        // message again (MQTT resends only then).
                        self.sink.next_generation();
                        self.eventloop.clean();
                        let now = tokio::time::Instant::now();
                        let recent = self
                            .last_resume
                            .is_some_and(|last| now - last < std::time::Duration::from_secs(1));
                        if !recent {
                            self.resume_backoff.reset();
                        } else if !self.resume_backoff.wait(&self.cancel).await {
                            break;
                        }
                        self.last_resume = Some(tokio::time::Instant::now());
                    }
                }
                Step::Event(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    self.backoff.reset();
                    // Subscribe on every connection, resumed sessions too: Mosquitto 2.0.11 does
                    // not restore shared subscriptions after a restart (their sessions, yes). A
                    // repeated subscription changes nothing, and sends no retained message to a
                    // shared one; a subscription without a group never resumes a session.
                    let mut filter = Filter::new(self.spec.filter.clone(), self.spec.qos);
                    filter.retain_forward_rule = if self.spec.retained {
                        RetainForwardRule::OnEverySubscribe
                    } else {
                        RetainForwardRule::Never
                    };
                    if let Err(error) = self.client.try_subscribe_many([filter]) {
                        self.fail_ready(mqtt_error("subscribe", error));
                        break;
                    }
                    subscribing = true;
                }
                Step::Event(Ok(Event::Incoming(Packet::SubAck(suback)))) if subscribing => {
                    subscribing = false;
                    let refused = suback
                        .return_codes
                        .iter()
                        .find(|code| !matches!(code, SubscribeReasonCode::Success(_)));
                    match refused {
                        Some(code) => {
                            let error = Error::new(
                                ErrorKind::Backend,
                                format!(
                                    "MQTT: the broker refused the subscription to {:?}: {code:?}",
                                    self.spec.filter
                                ),
                            );
                            if self.ready.is_some() {
                                self.fail_ready(error);
                                break;
                            }
                            let _ = self.sender.send(Err(error));
                        }
                        None => {
                            if let Some(ready) = self.ready.take() {
                                let _ = ready.send(Ok(()));
                            }
                        }
                    }
                }
                Step::Event(Ok(Event::Incoming(Packet::Publish(publish)))) => self.deliver(&publish, &handle),
                Step::Event(Ok(Event::Incoming(Packet::Disconnect(disconnect)))) => {
                    tracing::warn!(reason = ?disconnect.reason_code, filter = self.spec.filter, "MQTT: the broker disconnected a session");
                }
                Step::Event(Ok(_)) => {}
                Step::Event(Err(error)) => {
                    self.sink.next_generation();
                    if self.ready.is_some() {
                        self.fail_ready(mqtt_error("connect", error));
                        break;
                    }
                    tracing::warn!(%error, filter = self.spec.filter, "MQTT session: reconnecting");
                    if !self.backoff.wait(&self.cancel).await {
                        break;
                    }
                }
            }
        }
        self.sink.closed.store(true, Ordering::Release);
        self.hand_over_pubacks().await;
        self.sink.next_generation();
        connection::disconnect(&self.client, &mut self.eventloop).await;
        drop(guard);
    }

    /// Before a graceful close, gets the PUBACKs still in the outbox written (a while at most),
    /// so that what was handled does not come back when the session resumes.
    async fn hand_over_pubacks(&mut self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            {
                let mut marks = self.sink.marks.lock();
                marks.flush(&self.client);
                if marks.outbox.is_empty() {
                    return;
                }
            }
            // Messages that arrive meanwhile are not delivered: the broker sends them again.
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
        }
    }

    fn fail_ready(&mut self, error: Error) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(error));
        }
    }

    fn deliver(&mut self, publish: &Publish, handle: &Arc<dyn AckSink>) {
        let message = codec::decode(publish);
        let id = message.id();
        let attempt = {
            let mut attempts = self.sink.attempts.lock();
            if attempts.len() > 100_000 {
                attempts.clear();
            }
            let count = attempts.entry(id).or_insert(0);
            *count = if publish.dup { (*count + 1).max(2) } else { *count + 1 };
            *count
        };
        let token = {
            let mut marks = self.sink.marks.lock();
            let seq = marks.watermark.deliver((publish.pkid, publish.qos, id));
            Token::pair(marks.generation, seq.get())
        };
        let mut delivery = Delivery::new(message, attempt, Acker::new(handle.clone(), token, None));
        if self.spec.pattern || publish.retain {
            let topic = String::from_utf8_lossy(&publish.topic);
            delivery = delivery.with_info(DeliveryInfo::new().topic(&*topic).retained(publish.retain));
        }
        let _ = self.sender.send(Ok(delivery));
    }
}
