//! The publishing connection: a clean session whose event loop runs in its own task, and a
//! publish that returns once the broker acknowledged (PUBACK at QoS 1, PUBCOMP at QoS 2, sent at
//! QoS 0).
//!
//! rumqttc tells which packet id a publish got only through its events, in the order the
//! requests were taken from its channel; so each publish queues its waiter under the same lock
//! as its request, and the event loop task hands the waiters their packet ids in that order.
//! When the connection is lost, every waiter fails (the message may or may not have arrived: a
//! retry can duplicate it, at-least-once) and the requests rumqttc kept are dropped with them,
//! so that waiters and requests never get out of step.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason, Publish};
use rumqttc::v5::{AsyncClient, ClientError, Event, EventLoop};
use rumqttc::Outgoing;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::config::MqttConfig;
use super::connection::{self, mqtt_error, Backoff};
use crate::error::{Error, ErrorKind, Result};
use crate::pubsub::closed_error;

type Waiter = oneshot::Sender<Result<()>>;

#[derive(Default)]
struct State {
    /// Waiters of requests not yet written, in channel order.
    queued: VecDeque<Waiter>,
    /// Waiters of written publishes, by packet id.
    inflight: HashMap<u16, Waiter>,
    /// The waiter of a publish rumqttc holds back on a packet id collision.
    collided: Option<Waiter>,
    closed: bool,
    /// The broker's Maximum Packet Size, if it announced one.
    server_max: Option<usize>,
}

impl State {
    fn fail_all(&mut self, error: &Error) {
        for waiter in
            self.queued.drain(..).chain(self.inflight.drain().map(|(_, w)| w)).chain(self.collided.take())
        {
            let _ = waiter.send(Err(Error::new(error.kind(), error.message().to_owned())));
        }
    }

    fn complete(&mut self, pkid: u16, result: Result<()>) {
        if let Some(waiter) = self.inflight.remove(&pkid) {
            let _ = waiter.send(result);
        }
    }
}

/// The publishing connection.
pub(super) struct PubConn {
    client: AsyncClient,
    state: Arc<Mutex<State>>,
    cancel: CancellationToken,
}

impl PubConn {
    /// Connects; fails when the first connection attempt does.
    pub(super) async fn connect(config: &MqttConfig, client_id: String) -> Result<Self> {
        let session =
            connection::Session { client_id, clean_start: true, expiry: None, receive_maximum: 100 };
        let (client, eventloop) = connection::client(config, &session);
        let state = Arc::new(Mutex::new(State::default()));
        let cancel = CancellationToken::new();
        let (ready, connected) = oneshot::channel();
        tokio::spawn(run(eventloop, state.clone(), Backoff::new(config), cancel.clone(), ready));
        match connected.await {
            Ok(Ok(())) => Ok(PubConn { client, state, cancel }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(closed_error("MQTT publisher stopped while connecting")),
        }
    }

    /// The broker's Maximum Packet Size, if it announced one.
    pub(super) fn server_max(&self) -> Option<usize> {
        self.state.lock().server_max
    }

    /// Hands `publish` to the event loop; the receiver completes when the broker acknowledged it.
    pub(super) async fn send(&self, mut publish: Publish) -> Result<oneshot::Receiver<Result<()>>> {
        loop {
            publish = match self.try_send(publish)? {
                Ok(done) => return Ok(done),
                Err(back) => back,
            };
            // The channel is full (a connection that is down, many publishers): wait.
            if self.cancel.is_cancelled() {
                return Err(closed_error("MQTT publisher is closed"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// One attempt; gives the publish back when the channel is full.
    fn try_send(
        &self,
        mut publish: Publish,
    ) -> Result<std::result::Result<oneshot::Receiver<Result<()>>, Publish>> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(closed_error("MQTT publisher is closed"));
        }
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let properties = publish.properties.take().unwrap_or_default();
        let result = self.client.try_publish_with_properties(
            topic,
            publish.qos,
            publish.retain,
            publish.payload,
            properties,
        );
        match result {
            Ok(()) => {
                let (waiter, done) = oneshot::channel();
                state.queued.push_back(waiter);
                Ok(Ok(done))
            }
            Err(ClientError::TryRequest(rumqttc::v5::Request::Publish(back)))
            | Err(ClientError::Request(rumqttc::v5::Request::Publish(back))) => Ok(Err(back)),
            Err(error) => Err(mqtt_error("publish", error)),
        }
    }

    /// Refuses new publishes, waits (a while) for the ones in flight, disconnects.
    pub(super) async fn close(&self) {
        self.state.lock().closed = true;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            {
                let state = self.state.lock();
                if state.queued.is_empty() && state.inflight.is_empty() && state.collided.is_none() {
                    break;
                }
            }
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
    state: Arc<Mutex<State>>,
    mut backoff: Backoff,
    cancel: CancellationToken,
    ready: oneshot::Sender<Result<()>>,
) {
    let mut ready = Some(ready);
    loop {
        let event = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                backoff.reset();
                let server_max = connack.properties.as_ref().and_then(|p| p.max_packet_size);
                state.lock().server_max = server_max.map(|max| max as usize);
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut state = state.lock();
                let waiter = state.collided.take().or_else(|| state.queued.pop_front());
                if let Some(waiter) = waiter {
                    if pkid == 0 {
                        let _ = waiter.send(Ok(()));
                    } else {
                        state.inflight.insert(pkid, waiter);
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::AwaitAck(_))) => {
                let mut state = state.lock();
                state.collided = state.queued.pop_front();
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let ok = matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers);
                state.lock().complete(ack.pkid, ack_result(ok, ack.reason));
            }
            Ok(Event::Incoming(Packet::PubRec(rec))) => {
                let ok = matches!(rec.reason, PubRecReason::Success | PubRecReason::NoMatchingSubscribers);
                if !ok {
                    state.lock().complete(rec.pkid, ack_result(false, rec.reason));
                }
            }
            Ok(Event::Incoming(Packet::PubComp(comp))) => state.lock().complete(comp.pkid, Ok(())),
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
                    let mut state = state.lock();
                    if state.closed && state.inflight.is_empty() && state.queued.is_empty() {
                        break;
                    }
                    state.fail_all(&error);
                    // Drop what rumqttc kept for the next connection: its waiters just failed.
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
    let mut state = state.lock();
    state.closed = true;
    state.fail_all(&closed_error("MQTT publisher is closed"));
}
