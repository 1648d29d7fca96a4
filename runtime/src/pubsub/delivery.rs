//! A received message and the duty to settle it: [`Delivery`], [`DeliveryInfo`], [`Acker`] and
//! the backend side of settling, [`AckSink`] with its [`Token`] and [`Settle`] outcomes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::message::Message;
pub use crate::message::{DeliveryInfo, DeliveryInfos};
use crate::op::OpFuture;

/// A backend's own handle on one delivery: a sequence number, a row id, a Redis stream id (two
/// numbers), a Kafka partition and offset. 128 bits, so no backend needs a lookup table per
/// message to find what it settles. Ordered by the first number, then the second.
///
/// (Two `u64`s rather than a `u128`: a `u128` is aligned to 16 bytes, which every delivery, and
/// every future that holds one, would pay for in padding.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token {
    high: u64,
    low: u64,
}

impl Token {
    /// A token holding one number.
    pub const fn new(value: u64) -> Self {
        Token { high: 0, low: value }
    }

    /// A token holding two numbers (a stream id's milliseconds and sequence, a partition and an
    /// offset).
    pub const fn pair(high: u64, low: u64) -> Self {
        Token { high, low }
    }

    /// The number of a token made by [`new`](Token::new) (the low 64 bits).
    pub const fn get(self) -> u64 {
        self.low
    }

    /// The two numbers of a token made by [`pair`](Token::pair).
    pub const fn pair_parts(self) -> (u64, u64) {
        (self.high, self.low)
    }
}

/// How a delivery is settled; see the [`pubsub`](crate::pubsub) module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settle {
    /// Handled: never deliver it again.
    Ack,
    /// Not handled: deliver it again, after the delay where the backend can wait
    /// ([`Features::nack_delay`](super::Features::nack_delay)).
    Nack(Option<Duration>),
    /// Never deliver it again; dead-letter it where the broker can, with this reason.
    Reject(Box<str>),
    /// Give it back unhandled, without counting an attempt where the broker allows.
    Release,
}

impl Settle {
    /// `ack`, `nack`, `reject` or `release`, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Settle::Ack => "ack",
            Settle::Nack(_) => "nack",
            Settle::Reject(_) => "reject",
            Settle::Release => "release",
        }
    }
}

/// Where a backend settles its deliveries: one implementation per backend (or per subscription).
///
/// `token` is what the backend gave [`Acker::new`]; `message` is present when it asked for a copy
/// there (the in-memory backend needs it to redeliver). A late settle (the delivery was given to
/// another consumer meanwhile, the partition was taken away) should return an error saying so,
/// never panic: the router logs it, and at-least-once delivery means the message comes back.
pub trait AckSink: Send + Sync + 'static {
    /// Settles one delivery.
    fn settle(&self, token: Token, message: Option<Message>, how: Settle) -> OpFuture<'static>;
}

/// The right (and duty) to settle one delivery. Dropped unsettled, it releases the delivery.
pub struct Acker {
    sink: Option<Arc<dyn AckSink>>,
    token: Token,
    message: Option<Message>,
}

impl Acker {
    /// An acker settling `token` on `sink`; `message` is handed back to the sink when settling
    /// (the in-memory backend needs it to redeliver).
    pub fn new(sink: Arc<dyn AckSink>, token: Token, message: Option<Message>) -> Self {
        Acker { sink: Some(sink), token, message }
    }

    /// An acker for a delivery that needs no settling (every outcome does nothing).
    pub fn noop() -> Self {
        Acker { sink: None, token: Token::default(), message: None }
    }

    /// The copy of the delivered message this acker keeps for the backend (to redeliver it), if
    /// the backend asked for one. The router reuses it instead of cloning the message again.
    pub fn message(&self) -> Option<&Message> {
        self.message.as_ref()
    }

    /// The backend's token.
    pub fn token(&self) -> Token {
        self.token
    }

    /// Settles as `how`.
    pub fn settle(mut self, how: Settle) -> OpFuture<'static> {
        match self.sink.take() {
            Some(sink) => sink.settle(self.token, self.message.take(), how),
            None => OpFuture::ready(Ok(())),
        }
    }

    /// Acknowledges: the message will not be delivered again.
    pub fn ack(self) -> OpFuture<'static> {
        self.settle(Settle::Ack)
    }

    /// Negatively acknowledges: the message will be delivered again.
    pub fn nack(self) -> OpFuture<'static> {
        self.settle(Settle::Nack(None))
    }

    /// Negatively acknowledges, asking for redelivery after `delay` (honoured where supported).
    pub fn nack_after(self, delay: Option<Duration>) -> OpFuture<'static> {
        self.settle(Settle::Nack(delay))
    }

    /// Rejects: the message will never be delivered again, and goes to the broker's dead letter
    /// where it has one.
    pub fn reject(self, reason: impl Into<Box<str>>) -> OpFuture<'static> {
        self.settle(Settle::Reject(reason.into()))
    }

    /// Gives the message back unhandled, without counting an attempt where the broker allows.
    pub fn release(self) -> OpFuture<'static> {
        self.settle(Settle::Release)
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            let op = sink.settle(self.token, self.message.take(), Settle::Release);
            if !op.is_ready() {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    let sending = dropped::Sending::start();
                    handle.spawn(async move {
                        if let Err(error) = op.await {
                            tracing::warn!(%error, "release of a dropped delivery failed");
                        }
                        drop(sending);
                    });
                } else {
                    tracing::warn!(
                        "a delivery was dropped outside a tokio runtime; its release was not sent"
                    );
                }
            }
        }
    }
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker").field("token", &self.token).field("settled", &self.sink.is_none()).finish()
    }
}

/// A received message, with the duty to settle it ([`ack`](Delivery::ack),
/// [`nack`](Delivery::nack), [`reject`](Delivery::reject), [`release`](Delivery::release)).
/// Dropped unsettled, it is released.
#[derive(Debug)]
pub struct Delivery {
    message: Message,
    attempt: u32,
    acker: Acker,
}

impl Delivery {
    /// A delivery of `message`, on its `attempt`-th delivery (1 for the first; see
    /// [`Features::attempts`](super::Features::attempts) for how exact that count is).
    pub fn new(message: Message, attempt: u32, acker: Acker) -> Self {
        Delivery { message, attempt, acker }
    }

    /// Attaches where the message came from (see [`Message::delivery_info`]).
    pub fn with_info(mut self, info: DeliveryInfo) -> Self {
        self.message.set_delivery_info(info);
        self
    }

    /// Attaches where the message came from: entry `index` of a batch read together (see
    /// [`DeliveryInfos`]).
    ///
    /// # Panics
    /// If the batch has no entry `index`.
    pub fn with_info_of(mut self, infos: &DeliveryInfos, index: usize) -> Self {
        self.message.set_delivery_info_of(infos, index);
        self
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Where it came from, if the backend said.
    pub fn info(&self) -> Option<&DeliveryInfo> {
        self.message.delivery_info()
    }

    /// How many times this message has been delivered, this time included (1 the first time).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Acknowledges the message.
    pub fn ack(self) -> OpFuture<'static> {
        self.acker.ack()
    }

    /// Negatively acknowledges the message so that it is delivered again.
    pub fn nack(self) -> OpFuture<'static> {
        self.acker.nack()
    }

    /// Rejects the message (never again; dead-lettered where the broker can).
    pub fn reject(self, reason: impl Into<Box<str>>) -> OpFuture<'static> {
        self.acker.reject(reason)
    }

    /// Gives the message back unhandled.
    pub fn release(self) -> OpFuture<'static> {
        self.acker.release()
    }

    /// Splits into the message, its attempt and its acker.
    pub fn into_parts(self) -> (Message, u32, Acker) {
        (self.message, self.attempt, self.acker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hold_one_or_two_numbers() {
        assert_eq!(Token::new(u64::MAX).get(), u64::MAX);
        let token = Token::pair(1_700_000_000_123, 7);
        assert_eq!(token.pair_parts(), (1_700_000_000_123, 7));
        assert_eq!(Token::pair(0, 9), Token::new(9));
        assert!(Token::pair(1, 0) > Token::pair(0, u64::MAX), "ordered by the first number first");
    }
}

/// Releases of dropped deliveries that are still being sent: [`Acker`]'s drop spawns them, and a
/// router that aborts its handlers waits for them before it closes the backends that send them
/// (else a release would meet a closed connection pool, and the message would wait out its lease).
pub(crate) mod dropped {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Notify;

    /// Releases spawned and not finished, in the whole process.
    static SENDING: AtomicUsize = AtomicUsize::new(0);
    /// Woken when `SENDING` drops to zero.
    static DONE: Notify = Notify::const_new();

    /// One release being sent; dropping it (finished, failed or its task cancelled) counts it done.
    pub(crate) struct Sending(());

    impl Sending {
        pub(crate) fn start() -> Self {
            SENDING.fetch_add(1, Ordering::SeqCst);
            Sending(())
        }
    }

    impl Drop for Sending {
        fn drop(&mut self) {
            if SENDING.fetch_sub(1, Ordering::SeqCst) == 1 {
                DONE.notify_waiters();
            }
        }
    }

    /// Waits until every release spawned so far (by any router of the process) has been sent, or
    /// `limit` passes; true if none is left.
    pub(crate) async fn settled(limit: Duration) -> bool {
        let wait = async {
            loop {
                let done = DONE.notified();
                let mut done = std::pin::pin!(done);
                done.as_mut().enable();
                if SENDING.load(Ordering::SeqCst) == 0 {
                    return;
                }
                done.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}
