//! A handler with `concurrency = N`: one reader takes deliveries from the subscription and feeds N
//! lanes, each a task handling its deliveries one after another.
//!
//! - **Keyed order** ([`Route::order_by_key`](super::Route::order_by_key)): a delivery with a key
//!   goes to the lane its key hashes to, so messages with the same key are handled one at a time,
//!   in the order the backend delivered them; one without a key goes to any lane.
//! - **Otherwise** each delivery goes to the least loaded lane (an idle one if there is one).
//!
//! A lane holds at most [`DEPTH`] deliveries (the one being handled and the next), so at most
//! `N × DEPTH` are unsettled at once. When every lane a delivery may go to is full, the reader
//! waits; a lane that finishes a delivery wakes it only if it is waiting, so a busy handler costs
//! no wake-up per message. Each delivery is settled as soon as it is handled, in any order: a
//! backend that settles cumulatively (Kafka offsets) turns that into safe commits through its
//! [`Watermark`](crate::pubsub::watermark::Watermark).
//!
//! Replaces N workers taking turns on one subscription behind a mutex, which cost about three
//! times a single worker's per-message work at N = 4.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};
use tokio_util::task::TaskTracker;

use super::worker::{handle, next_delivery, Prepared};
use crate::pubsub::{Delivery, Subscription};

/// Deliveries a lane holds at most: the one it handles and the next, so that a busy lane never
/// waits for the reader between two messages.
pub(crate) const DEPTH: usize = 2;

/// What the reader and the lanes share.
struct Shared {
    /// Deliveries sent to each lane and not yet handled.
    loads: Box<[AtomicUsize]>,
    /// The reader waits for room in a lane.
    reader_waiting: AtomicBool,
    /// A lane made room while the reader waited.
    freed: Notify,
}

impl Shared {
    fn has_room(&self, lane: usize) -> bool {
        self.loads[lane].load(Ordering::SeqCst) < DEPTH
    }

    /// The lane for a delivery without a fixed lane: an idle one if any, else the least loaded
    /// one with room, looking from `start` on (so that equal lanes take turns).
    fn least_loaded(&self, start: usize) -> Option<usize> {
        let lanes = self.loads.len();
        let mut best: Option<(usize, usize)> = None;
        for step in 0..lanes {
            let lane = (start + step) % lanes;
            let load = self.loads[lane].load(Ordering::SeqCst);
            if load == 0 {
                return Some(lane);
            }
            if load < DEPTH && best.is_none_or(|(_, least)| load < least) {
                best = Some((lane, load));
            }
        }
        best.map(|(lane, _)| lane)
    }
}

/// The lane of a key: FNV-1a over its bytes, stable across runs and processes.
fn lane_of(key: &str, lanes: usize) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % lanes as u64) as usize
}

/// Reads `sub` until intake stops or it ends, feeding `p.concurrency` lanes; returns once every
/// lane has handled what it was given.
pub(crate) async fn consume(p: &Arc<Prepared>, mut sub: Subscription, tracker: &TaskTracker) {
    let lanes = p.concurrency;
    let shared = Arc::new(Shared {
        loads: (0..lanes).map(|_| AtomicUsize::new(0)).collect(),
        reader_waiting: AtomicBool::new(false),
        freed: Notify::new(),
    });
    let mut senders = Vec::with_capacity(lanes);
    // Dropping the JoinSet (when this task is aborted) aborts the lanes, releasing their deliveries.
    let mut workers = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let (sender, mut receiver) = mpsc::channel::<Delivery>(DEPTH);
        senders.push(sender);
        let (p, shared) = (p.clone(), shared.clone());
        workers.spawn(tracker.track_future(async move {
            while let Some(delivery) = receiver.recv().await {
                handle(&p, delivery).await;
                shared.loads[lane].fetch_sub(1, Ordering::SeqCst);
                if shared.reader_waiting.load(Ordering::SeqCst) {
                    shared.freed.notify_one();
                }
            }
        }));
    }

    // A child token of the reader's own (see `consume_serial`).
    let intake = p.intake.child_token();
    let mut cancelled = pin!(intake.cancelled());
    let mut turn = 0;
    'read: loop {
        let next = poll_fn(|cx| next_delivery(&intake, &mut sub, cancelled.as_mut(), cx)).await;
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                tracing::warn!(handler = %p.info.name, %error, "subscription error");
                continue;
            }
            None => break,
        };
        let keyed = match (p.order_by_key, delivery.message().key()) {
            (true, Some(key)) => Some(lane_of(key, lanes)),
            _ => None,
        };
        let lane = loop {
            let chosen = match keyed {
                Some(lane) => shared.has_room(lane).then_some(lane),
                None => shared.least_loaded(turn),
            };
            if let Some(lane) = chosen {
                break lane;
            }
            // Every lane it may go to is full: wait for one to make room. The flag is raised
            // before the second look, so a lane that makes room after it wakes the reader.
            let freed = shared.freed.notified();
            let mut freed = pin!(freed);
            freed.as_mut().enable();
            shared.reader_waiting.store(true, Ordering::SeqCst);
            let room = match keyed {
                Some(lane) => shared.has_room(lane),
                None => shared.least_loaded(turn).is_some(),
            };
            if !room {
                tokio::select! {
                    biased;
                    () = freed => {}
                    () = cancelled.as_mut() => {
                        shared.reader_waiting.store(false, Ordering::SeqCst);
                        // Not started: give it back for another consumer (or the next run).
                        if let Err(error) = delivery.release().await {
                            tracing::warn!(handler = %p.info.name, %error, "release failed");
                        }
                        break 'read;
                    }
                }
            }
            shared.reader_waiting.store(false, Ordering::SeqCst);
        };
        turn = lane + 1;
        shared.loads[lane].fetch_add(1, Ordering::SeqCst);
        // A lane's channel holds DEPTH and its load counts what it holds: there is room.
        if senders[lane].try_send(delivery).is_err() {
            unreachable!("lane {lane} had room");
        }
    }
    drop(senders);
    while workers.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_lane_and_spread_over_the_lanes() {
        assert_eq!(lane_of("order-42", 4), lane_of("order-42", 4));
        let mut used = [0usize; 4];
        for n in 0..400 {
            used[lane_of(&format!("order-{n}"), 4)] += 1;
        }
        assert!(used.iter().all(|&count| count > 60), "{used:?}");
    }

    #[test]
    fn an_idle_lane_first_then_the_least_loaded_with_room() {
        let shared = Shared {
            loads: [2, 1, 0, 1].into_iter().map(AtomicUsize::new).collect(),
            reader_waiting: AtomicBool::new(false),
            freed: Notify::new(),
        };
        assert_eq!(shared.least_loaded(0), Some(2));
        shared.loads[2].store(2, Ordering::SeqCst);
        assert_eq!(shared.least_loaded(0), Some(1));
        assert_eq!(shared.least_loaded(2), Some(3), "turns go on from the last lane");
        for load in shared.loads.iter() {
            load.store(DEPTH, Ordering::SeqCst);
        }
        assert_eq!(shared.least_loaded(0), None);
    }
}
