//! A handler with `concurrency = N`: the reader task takes deliveries from the subscription and
//! handles up to N at once, as N lanes it polls itself (no task, channel or cross-thread wake-up
//! per message: with a handler that does not wait, N lanes cost about what one does).
//!
//! - **Keyed order** ([`Route::order_by_key`](super::Route::order_by_key)): a delivery with a key
//!   goes to the lane its key hashes to, so messages with the same key are handled one at a time,
//!   in the order the backend delivered them (one more may wait behind the lane's current one);
//!   one without a key goes to any free lane.
//! - **Otherwise** each delivery goes to the first free lane.
//!
//! When no lane a delivery may go to is free, the reader stops reading until one is: at most
//! `2 × N` deliveries are unsettled at once. Each delivery is settled as soon as it is handled,
//! in any order: a backend that settles cumulatively (Kafka offsets) turns that into safe commits
//! through its [`Watermark`](crate::pubsub::watermark::Watermark).
//!
//! The lanes share the reader's thread: they overlap their waits (a database, a broker, a
//! timer), not their computing. A handler that computes for long should hand that to
//! `tokio::task::spawn_blocking` (or run as several routes), as any async code must.
//!
//! Replaces N tasks fed through channels, which cost 1.4 to 1.9 times a single lane's work per
//! message at N = 4 (a wake-up of another task for each message), and before them N workers
//! taking turns on one subscription behind a mutex (about three times).

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use super::worker::{handle, next_delivery, Handling, Left, Prepared};
use crate::middleware::CallSlot;
use crate::pubsub::{Delivery, Subscription};

/// Which lanes were woken since the reader last looked, and the reader's own waker.
struct Woken {
    lanes: Box<[AtomicBool]>,
    reader: AtomicWaker,
}

/// The waker a lane's handler gets: marks the lane and wakes the reader's task. Made once per
/// lane, so waking costs no allocation.
struct LaneWaker {
    lane: usize,
    woken: Arc<Woken>,
}

impl Wake for LaneWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.lanes[self.lane].store(true, Ordering::Release);
        self.woken.reader.wake();
    }
}

/// The lane of a key: FNV-1a over its bytes, stable across runs and processes.
fn lane_of(key: &str, lanes: usize) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % lanes as u64) as usize
}

/// [`handle`]'s type.
type Handle<'a, F> = fn(&'a Prepared, Delivery, &mut Context<'_>, &mut Calls<'a>) -> Left<'a, F>;

/// A slot for handler calls, if the chain has one (see `CallSlot`).
type Calls<'a> = Option<Box<dyn CallSlot<'a> + 'a>>;

/// A lane's slot for what is left of its delivery, pinned.
type Slot<'a, F> = Pin<Box<Option<Handling<'a, F>>>>;

/// An empty place for what `handle` leaves (the function names its type).
pub(super) fn empty_slot<'a, F: Future<Output = ()> + 'a>(
    _: &'a Prepared,
    _handle: Handle<'a, F>,
) -> Option<Handling<'a, F>> {
    None
}

/// `lanes` empty slots for what `handle` leaves.
fn slots<'a, F: Future<Output = ()> + 'a>(
    lanes: usize,
    p: &'a Prepared,
    handle: Handle<'a, F>,
) -> Vec<Slot<'a, F>> {
    (0..lanes).map(|_| Box::pin(empty_slot(p, handle))).collect()
}

/// Starts `delivery` on the lane whose slot and waker these are (see `consume`).
fn start_on<'a, F: Future<Output = ()> + 'a>(
    p: &'a Prepared,
    slot: &mut Slot<'a, F>,
    waker: &Waker,
    delivery: Delivery,
    calls: &mut Calls<'a>,
    handle: Handle<'a, F>,
) {
    let mut cx = Context::from_waker(waker);
    let Some(left) = handle(p, delivery, &mut cx, calls).into_handling() else { return };
    let mut slot = slot.as_mut();
    slot.set(Some(left));
    let handling = slot.as_mut().as_pin_mut().expect("just set");
    if handling.poll(&mut cx).is_ready() {
        slot.set(None);
    }
}

/// Where a delivery may go: its key's lane, or any.
fn lane_for(p: &Prepared, delivery: &Delivery, lanes: usize) -> Option<usize> {
    match (p.order_by_key, delivery.message().key()) {
        (true, Some(key)) => Some(lane_of(key, lanes)),
        _ => None,
    }
}

/// Reads `sub` until intake stops or it ends, handling up to `p.concurrency` deliveries at once;
/// returns once every lane has handled what it was given. A delivery read but not started when
/// intake stops is dropped, which gives it back (released) for another consumer.
pub(crate) async fn consume(p: &Arc<Prepared>, mut sub: Subscription) {
    let p: &Prepared = p;
    let lanes = p.concurrency;
    let woken = Arc::new(Woken {
        lanes: (0..lanes).map(|_| AtomicBool::new(false)).collect(),
        reader: AtomicWaker::new(),
    });
    let wakers: Vec<Waker> =
        (0..lanes).map(|lane| Waker::from(Arc::new(LaneWaker { lane, woken: woken.clone() }))).collect();
    // What each lane's delivery has left to do, once it had to wait; each slot is reused from
    // message to message.
    let mut running = slots(lanes, p, handle);
    // Where the handler's calls are made while none of them waits (a call that waits takes it
    // along; see `CallSlot`).
    let mut calls = p.chain.call_slot();
    // A keyed delivery waiting behind its lane's current one.
    let mut next_up: Vec<Option<Delivery>> = (0..lanes).map(|_| None).collect();
    // Read, not yet placed: no lane it may go to has room.
    let mut waiting: Option<(Delivery, Option<usize>)> = None;
    // A child token of the reader's own (see `consume_serial`).
    let intake = p.intake.token().child_token();
    let mut cancelled = pin!(intake.cancelled());
    let mut reading = true;
    // Starts a delivery on a free lane: a handler that does not wait is done (and the lane
    // free again) before the reader reads on; what waits stays in the lane's slot, polled once.
    let start = |running: &mut Vec<_>, calls: &mut Option<_>, lane: usize, delivery: Delivery| {
        start_on(p, &mut running[lane], &wakers[lane], delivery, calls, handle);
    };
    poll_fn(|cx| {
        woken.reader.register(cx.waker());
        loop {
            let mut progress = false;
            for lane in 0..lanes {
                // (A plain load first: most lanes were not woken, and a swap costs more.)
                if !woken.lanes[lane].load(Ordering::Relaxed)
                    || !woken.lanes[lane].swap(false, Ordering::Acquire)
                {
                    continue;
                }
                let Some(handling) = running[lane].as_mut().as_pin_mut() else { continue };
                if handling.poll(&mut Context::from_waker(&wakers[lane])).is_pending() {
                    continue;
                }
                running[lane].set(None);
                progress = true;
                // The delivery waiting behind it goes next (it may finish at once, too).
                while running[lane].is_none() {
                    let Some(delivery) = next_up[lane].take() else { break };
                    start(&mut running, &mut calls, lane, delivery);
                }
            }
            if let Some((delivery, keyed)) = waiting.take() {
                let free = |lane: usize| running[lane].is_none();
                let lane = match keyed {
                    Some(lane) if free(lane) => Some(lane),
                    Some(lane) if next_up[lane].is_none() => {
                        next_up[lane] = Some(delivery);
                        continue;
                    }
                    Some(_) => None,
                    // The first free lane: the same few slots stay warm in the cache.
                    None => (0..lanes).find(|&lane| free(lane)),
                };
                match lane {
                    Some(lane) => {
                        start(&mut running, &mut calls, lane, delivery);
                        progress = true;
                    }
                    None => waiting = Some((delivery, keyed)),
                }
            }
            if reading && waiting.is_none() {
                match next_delivery(&p.intake, &mut sub, cancelled.as_mut(), cx) {
                    Poll::Ready(Some(Ok(delivery))) => {
                        let keyed = lane_for(p, &delivery, lanes);
                        waiting = Some((delivery, keyed));
                        progress = true;
                    }
                    Poll::Ready(Some(Err(error))) => {
                        tracing::warn!(handler = %p.info.name, %error, "subscription error");
                        progress = true;
                    }
                    Poll::Ready(None) => reading = false,
                    Poll::Pending => {}
                }
            }
            if !reading {
                // Not started: dropping it gives it back for another consumer (or the next run).
                waiting = None;
            }
            if !progress {
                break;
            }
        }
        let busy = running.iter().any(|slot| slot.is_some()) || next_up.iter().any(Option::is_some);
        if reading || busy {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
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
}
