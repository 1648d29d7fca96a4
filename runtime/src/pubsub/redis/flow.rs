//! What both kinds of subscription share: the [`Queue`] between the tasks that fetch
//! deliveries and the [`Subscription`](crate::pubsub::Subscription) that hands them out, the
//! in-flight count ([`Flow`]), the consumer numbers of this process ([`Slot`]), and backoff.
//!
//! Every delivery counts against the subscription's in-flight limit from the moment it is read
//! until it is settled; the reader asks for no more than the room left.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::entry::StreamId;
use super::shared::Inner;
use crate::error::Error;
use crate::message::Message;

/// One fetched entry, waiting to be handed out.
pub(super) struct Item {
    pub(super) id: StreamId,
    pub(super) message: Message,
    pub(super) attempt: u32,
}

/// Fetched deliveries on their way to the subscription's stream.
#[derive(Default)]
pub(super) struct Queue {
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Item>,
    closed: bool,
}

impl Queue {
    /// Adds an item; gives it back when the queue is closed (the subscription has ended).
    pub(super) fn push(&self, item: Item) -> std::result::Result<(), Item> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(item);
        }
        state.items.push_back(item);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    pub(super) fn pop(&self) -> Option<Item> {
        self.state.lock().items.pop_front()
    }

    /// Closes the queue and returns what was never handed out.
    pub(super) fn close(&self) -> Vec<Item> {
        let mut state = self.state.lock();
        state.closed = true;
        state.items.drain(..).collect()
    }

    pub(super) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }
}

/// Deliveries read and not yet settled: how many, and how many times each entry is out.
#[derive(Default)]
struct Inflight {
    ids: HashMap<StreamId, u32>,
    count: usize,
}

/// How long a reader with some room, but less than its low-water mark, waits for more before
/// it reads what fits.
const TOP_UP: Duration = Duration::from_millis(20);

/// What both kinds of subscription share: the queue, the in-flight count and the end.
pub(super) struct Flow {
    pub(super) queue: Queue,
    inflight: Mutex<Inflight>,
    pub(super) room: Notify,
    pub(super) max_in_flight: usize,
    /// The room the reader waits for: `min(batch, max_in_flight / 2)`, at least 1, so that
    /// settling one delivery at a time does not turn into one read (and one wake-up) per delivery.
    low_water: usize,
    pub(super) cancel: CancellationToken,
    /// The client id of the reader's connection (0: unknown).
    pub(super) reader: AtomicI64,
}

impl Flow {
    pub(super) fn new(max_in_flight: usize, batch: usize, cancel: CancellationToken) -> Self {
        let max_in_flight = max_in_flight.max(1);
        Flow {
            queue: Queue::default(),
            inflight: Mutex::new(Inflight::default()),
            room: Notify::new(),
            max_in_flight,
            low_water: batch.min(max_in_flight / 2).max(1),
            cancel,
            reader: AtomicI64::new(0),
        }
    }

    /// Once the subscription ends, ends the reader's blocking read at once (`CLIENT UNBLOCK`:
    /// the read returns empty, so nothing is read that no one would hand out).
    pub(super) async fn unblock_at_end(self: &Flow, inner: &Inner) {
        self.cancel.cancelled().await;
        let id = self.reader.load(Ordering::Acquire);
        if id != 0 {
            let unblock = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(id)
                .query_async::<Value>(&mut inner.manager.clone())
                .await;
            if let Err(error) = unblock {
                tracing::debug!(%error, "redis: CLIENT UNBLOCK failed; the reader ends after its block time");
            }
        }
    }

    /// Counts `item` in flight and queues it; returns it when the subscription has ended.
    pub(super) fn admit(&self, item: Item) -> std::result::Result<(), Item> {
        self.started(item.id);
        self.queue.push(item).inspect_err(|item| self.done(item.id))
    }

    pub(super) fn started(&self, id: StreamId) {
        let mut inflight = self.inflight.lock();
        *inflight.ids.entry(id).or_insert(0) += 1;
        inflight.count += 1;
    }

    /// One delivery of `id` is settled.
    pub(super) fn done(&self, id: StreamId) {
        let mut inflight = self.inflight.lock();
        if let Some(n) = inflight.ids.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                inflight.ids.remove(&id);
            }
            inflight.count -= 1;
        }
        let room = self.max_in_flight.saturating_sub(inflight.count);
        drop(inflight);
        if room >= self.low_water {
            self.room.notify_one();
        }
    }

    pub(super) fn is_out(&self, id: StreamId) -> bool {
        self.inflight.lock().ids.contains_key(&id)
    }

    pub(super) fn room_left(&self) -> usize {
        self.max_in_flight.saturating_sub(self.inflight.lock().count)
    }

    /// Waits until at least the low-water room may be read, or, when some room is left but less,
    /// for [`TOP_UP`] at most (a consumer may hold most of its deliveries until more arrive);
    /// `None` once the subscription has ended.
    pub(super) async fn wait_room(&self) -> Option<usize> {
        loop {
            let notified = self.room.notified();
            if self.cancel.is_cancelled() {
                return None;
            }
            let room = self.room_left();
            if room >= self.low_water {
                return Some(room);
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(TOP_UP), if room > 0 => return Some(room),
                () = self.cancel.cancelled() => return None,
            }
        }
    }

    /// The next item to hand out; `None` once the subscription has ended.
    pub(super) async fn next(&self) -> Option<Item> {
        loop {
            let ready = self.queue.ready.notified();
            if self.cancel.is_cancelled() {
                return None;
            }
            if let Some(item) = self.queue.pop() {
                return Some(item);
            }
            tokio::select! {
                () = ready => {}
                () = self.cancel.cancelled() => return None,
            }
        }
    }
}

/// Ends a subscription's tasks when its stream is dropped.
pub(super) struct EndOnDrop(pub(super) CancellationToken);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Backoff before reconnection attempt `failures` (1, 2, ...): 100 ms doubling up to `max`, with
/// up to a quarter of jitter.
pub(super) fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << failures.saturating_sub(1).min(16)).min(max);
    base + base.mul_f64(fastrand::f64() * 0.25)
}

/// Sleeps `delay` unless `cancel` comes first (then `false`).
pub(super) async fn pause(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = cancel.cancelled() => false,
    }
}

pub(super) fn redis_error(error: redis::RedisError, what: &str) -> Error {
    Error::backend(error).context(format!("redis: {what}"))
}

// ---------------------------------------------------------------------------------------------
// Consumer slots

/// The consumer numbers in use in this process, per server, stream, group and name.
static SLOTS: Mutex<Option<HashMap<String, BTreeSet<usize>>>> = Mutex::new(None);

/// A consumer number held by a live subscription (given back when dropped).
pub(super) struct Slot {
    key: String,
    number: usize,
}

impl Slot {
    /// The lowest number free under `key`.
    pub(super) fn take(key: String) -> Slot {
        let mut slots = SLOTS.lock();
        let used = slots.get_or_insert_with(HashMap::new).entry(key.clone()).or_default();
        let number = (0..).find(|n| !used.contains(n)).expect("a free number");
        used.insert(number);
        Slot { key, number }
    }

    pub(super) fn number(&self) -> usize {
        self.number
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = SLOTS.lock();
        if let Some(map) = slots.as_mut() {
            if let Some(used) = map.get_mut(&self.key) {
                used.remove(&self.number);
                if used.is_empty() {
                    map.remove(&self.key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let max = Duration::from_secs(5);
        assert!(
            backoff(1, max) >= Duration::from_millis(100) && backoff(1, max) <= Duration::from_millis(125)
        );
        assert!(backoff(2, max) >= Duration::from_millis(200));
        assert!(backoff(40, max) >= max && backoff(40, max) <= max.mul_f64(1.25));
    }

    #[test]
    fn slots_take_the_lowest_free_number() {
        let key = format!("test-{}", fastrand::u64(..));
        let a = Slot::take(key.clone());
        let b = Slot::take(key.clone());
        assert_eq!((a.number(), b.number()), (0, 1));
        drop(a);
        let c = Slot::take(key.clone());
        assert_eq!(c.number(), 0);
        let d = Slot::take(key);
        assert_eq!(d.number(), 2);
    }
}
