//! [`Watermark`]: turns acks that arrive in any order into settlements that leave in delivery
//! order, for backends that settle cumulatively.
//!
//! A Kafka consumer commits a position: committing offset N says every offset before it is done,
//! so acking N while N−1 is still being handled must not commit past N−1. An MQTT client must send
//! its PUBACKs in the order the messages arrived. Both keep one watermark per partition (or
//! session): [`deliver`](Watermark::deliver) each delivery as it is read, in order, and
//! [`settle`](Watermark::settle) it when the router acks it; `settle` hands back what may be
//! settled now: the longest run of settled deliveries at the front, in delivery order (for Kafka,
//! commit the last one's offset + 1; for MQTT, send one PUBACK each).
//!
//! Concurrency and key-ordered lanes make out-of-order acks the normal case, not an accident: the
//! router settles each delivery as soon as it is handled, and the watermark keeps the backend
//! safe. A delivery settled twice, or one from before a [`reset`](Watermark::reset) (a
//! rebalance took its partition away), changes nothing and is reported as [`Settled::Unknown`].

use std::collections::VecDeque;

/// The place of one delivery in its [`Watermark`]: handed out by [`Watermark::deliver`], given
/// back to [`Watermark::settle`]. Fits in a delivery's settle token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(u64);

impl Seq {
    /// The raw number (to store in a settle token).
    pub fn get(self) -> u64 {
        self.0
    }

    /// A `Seq` from a raw number given out by [`get`](Seq::get).
    pub fn from_raw(raw: u64) -> Seq {
        Seq(raw)
    }
}

/// Deliveries of one partition or session in the order they were read, each pending or settled.
/// `K` is what the backend needs back when a delivery may be settled (an offset, a packet id).
#[derive(Debug)]
pub struct Watermark<K> {
    /// The `Seq` of the front entry of `window`.
    front: u64,
    /// Every delivery from the oldest unsettled one on: its key and whether it was settled.
    window: VecDeque<(K, bool)>,
}

/// What [`Watermark::settle`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled<K> {
    /// The delivery was settled; these may now be settled with the backend, in order (empty when
    /// an earlier delivery is still pending).
    Released(Vec<K>),
    /// Not a pending delivery of this watermark: already settled, or from before a reset.
    Unknown,
}

impl<K> Default for Watermark<K> {
    fn default() -> Self {
        Watermark { front: 0, window: VecDeque::new() }
    }
}

impl<K> Watermark<K> {
    /// An empty watermark.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a delivery just read (in the order read); returns its place, to settle it with.
    pub fn deliver(&mut self, key: K) -> Seq {
        let seq = self.front + self.window.len() as u64;
        self.window.push_back((key, false));
        Seq(seq)
    }

    /// Settles the delivery at `seq`; returns the deliveries that may now be settled with the
    /// backend, oldest first.
    pub fn settle(&mut self, seq: Seq) -> Settled<K> {
        let Seq(seq) = seq;
        let mut released = Vec::new();
        match self.settle_with(Seq(seq), |key| released.push(key)) {
            true => Settled::Released(released),
            false => Settled::Unknown,
        }
    }

    /// [`settle`](Self::settle) without collecting: hands each delivery that may now be settled
    /// with the backend to `release`, oldest first, and says whether `seq` was pending (`false`
    /// is [`Settled::Unknown`]). Nothing is allocated.
    pub fn settle_with(&mut self, seq: Seq, mut release: impl FnMut(K)) -> bool {
        // The front entry is always pending: settled ones leave as soon as they reach the front.
        match seq.0.checked_sub(self.front) {
            // The oldest (acks in order): it leaves, with the settled ones behind it.
            Some(0) => {
                let Some((key, _)) = self.window.pop_front() else { return false };
                release(key);
                self.front += 1;
                while let Some(&(_, true)) = self.window.front() {
                    let (key, _) = self.window.pop_front().expect("checked above");
                    release(key);
                    self.front += 1;
                }
                true
            }
            // Behind a pending one: marked, released later.
            Some(index) => match self.window.get_mut(index as usize) {
                Some((_, done)) if !*done => {
                    *done = true;
                    true
                }
                _ => false,
            },
            None => false,
        }
    }

    /// The key of the delivery at `seq` while it is pending (not settled, not from before a
    /// reset).
    pub fn get(&self, seq: Seq) -> Option<&K> {
        let index = usize::try_from(seq.0.checked_sub(self.front)?).ok()?;
        self.window.get(index).filter(|(_, done)| !*done).map(|(key, _)| key)
    }

    /// How many deliveries are held: pending ones, and settled ones behind a pending one.
    pub fn len(&self) -> usize {
        self.window.len()
    }

    /// Whether every delivery was released.
    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }

    /// The oldest delivery still pending, if any: a cumulative commit stops before it.
    pub fn oldest_pending(&self) -> Option<&K> {
        self.window.front().map(|(key, _)| key)
    }

    /// Forgets every delivery (the partition was taken away, the session ended): settling one of
    /// them later is [`Settled::Unknown`], and numbering goes on, so old and new never mix.
    pub fn reset(&mut self) {
        self.front += self.window.len() as u64;
        self.window.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released<K>(settled: Settled<K>) -> Vec<K> {
        match settled {
            Settled::Released(keys) => keys,
            Settled::Unknown => panic!("expected a release"),
        }
    }

    #[test]
    fn out_of_order_acks_release_in_order() {
        let mut w = Watermark::new();
        let seqs: Vec<Seq> = [10u64, 11, 12, 15].into_iter().map(|offset| w.deliver(offset)).collect();
        assert!(released(w.settle(seqs[2])).is_empty(), "12 waits for 10 and 11");
        assert!(released(w.settle(seqs[1])).is_empty());
        assert_eq!(w.oldest_pending(), Some(&10));
        assert_eq!(released(w.settle(seqs[0])), [10, 11, 12]);
        assert_eq!(w.len(), 1);
        assert_eq!(released(w.settle(seqs[3])), [15]);
        assert!(w.is_empty());
    }

    #[test]
    fn double_settles_and_settles_after_a_reset_change_nothing() {
        let mut w = Watermark::new();
        let a = w.deliver("a");
        let b = w.deliver("b");
        assert!(released(w.settle(b)).is_empty());
        assert_eq!(w.settle(b), Settled::Unknown, "settled twice");
        w.reset();
        assert!(w.is_empty());
        assert_eq!(w.settle(a), Settled::Unknown, "from before the reset");
        assert_eq!(w.get(a), None);
        let c = w.deliver("c");
        assert_ne!(c, a);
        assert_eq!(w.get(c), Some(&"c"));
        assert_eq!(released(w.settle(c)), ["c"]);
        assert_eq!(w.settle(a), Settled::Unknown);
        assert_eq!(w.settle(Seq::from_raw(c.get() + 5)), Settled::Unknown, "never delivered");
    }

    /// Against a model: whatever the order of settles, each delivery is released exactly once,
    /// in delivery order, and never before every earlier one was settled.
    #[test]
    fn any_settle_order_releases_a_prefix_in_order() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |bound: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % bound as u64) as usize
        };
        for round in 0..200 {
            let mut w = Watermark::new();
            let count = 1 + next(40);
            let mut pending: Vec<(Seq, usize)> = (0..count).map(|i| (w.deliver(i), i)).collect();
            let mut settled = vec![false; count];
            let mut out = Vec::new();
            while !pending.is_empty() {
                let (seq, i) = pending.swap_remove(next(pending.len()));
                settled[i] = true;
                let got = released(w.settle(seq));
                for &k in &got {
                    assert!(settled[..=k].iter().all(|s| *s), "round {round}: {k} released early");
                }
                out.extend(got);
            }
            assert_eq!(out, (0..count).collect::<Vec<_>>(), "round {round}");
            assert!(w.is_empty());
        }
    }
}
