//! [`MemoryDelayStore`]: delayed messages kept in the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::op::OpFuture;
use crate::store::{DelayStore, DelayedMessage, TakenMessage};

/// A [`DelayStore`] in the process's memory: for tests and development, and for delays that may
/// be lost with the process. Cheap to clone (clones share the messages).
#[derive(Clone, Default)]
pub struct MemoryDelayStore {
    inner: Arc<Mutex<Scopes>>,
}

#[derive(Default)]
struct Scopes {
    next_seq: u64,
    scopes: HashMap<String, Scope>,
}

/// One scope's messages, ordered by when they are next available (due, or the end of a lease),
/// then by number; `at` finds a message's place by its number.
#[derive(Default)]
struct Scope {
    queue: BTreeMap<(u64, u64), DelayedMessage>,
    at: HashMap<u64, u64>,
}

impl MemoryDelayStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl DelayStore for MemoryDelayStore {
    fn schedule<'a>(&'a self, scope: &'a str, messages: Vec<DelayedMessage>) -> OpFuture<'a> {
        let mut inner = self.inner.lock();
        let Scopes { next_seq, scopes } = &mut *inner;
        let scope = scopes.entry(scope.to_owned()).or_default();
        for message in messages {
            *next_seq += 1;
            scope.at.insert(*next_seq, message.due_ms);
            scope.queue.insert((message.due_ms, *next_seq), message);
        }
        OpFuture::ready(Ok(()))
    }

    fn take_due<'a>(
        &'a self,
        scope: &'a str,
        now_ms: u64,
        limit: usize,
        lease: Duration,
    ) -> OpFuture<'a, Vec<TakenMessage>> {
        let mut inner = self.inner.lock();
        let Some(scope) = inner.scopes.get_mut(scope) else { return OpFuture::ready(Ok(Vec::new())) };
        let until = now_ms.saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        let due: Vec<(u64, u64)> =
            scope.queue.range(..=(now_ms, u64::MAX)).take(limit).map(|(k, _)| *k).collect();
        let mut taken = Vec::with_capacity(due.len());
        for (at, seq) in due {
            let delayed = scope.queue.remove(&(at, seq)).expect("just listed");
            scope.queue.insert((until, seq), delayed.clone());
            scope.at.insert(seq, until);
            taken.push(TakenMessage { seq, delayed });
        }
        OpFuture::ready(Ok(taken))
    }

    fn done<'a>(&'a self, scope: &'a str, seqs: &'a [u64]) -> OpFuture<'a> {
        let mut inner = self.inner.lock();
        if let Some(scope) = inner.scopes.get_mut(scope) {
            for seq in seqs {
                if let Some(at) = scope.at.remove(seq) {
                    scope.queue.remove(&(at, *seq));
                }
            }
        }
        OpFuture::ready(Ok(()))
    }

    fn next_due<'a>(&'a self, scope: &'a str) -> OpFuture<'a, Option<u64>> {
        let inner = self.inner.lock();
        let next = inner.scopes.get(scope).and_then(|s| s.queue.keys().next()).map(|(at, _)| *at);
        OpFuture::ready(Ok(next))
    }

    fn count<'a>(&'a self, scope: &'a str) -> OpFuture<'a, u64> {
        let inner = self.inner.lock();
        OpFuture::ready(Ok(inner.scopes.get(scope).map_or(0, |s| s.queue.len() as u64)))
    }
}

impl std::fmt::Debug for MemoryDelayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        let held: usize = inner.scopes.values().map(|s| s.queue.len()).sum();
        f.debug_struct("MemoryDelayStore").field("held", &held).finish()
    }
}
