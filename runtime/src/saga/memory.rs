//! [`MemorySagaStore`]: saga instances in the process.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::error::Result;
use crate::pubsub::Publisher;
use crate::store::{SagaCommit, SagaKey, SagaLoad, SagaMessage, SagaOutcome};

/// Saga instances in the process's memory ([`Sagas::memory`](super::Sagas::memory)), for tests and
/// development; a step's messages go through the step's handler's publisher.
///
/// A commit checks the instance's version, publishes its messages, then records the commit if
/// the version is still the one it loaded. No lock is held while publishing (a publish may wait
/// for room in a queue that only another step of the saga empties), so two steps of one
/// instance may both publish, and the later one then conflicts and runs again: messages go out
/// at least once. A publish that fails records nothing (the message is redelivered and runs
/// again). Timeouts are tokio timers: they do not survive the process. Finished instances are
/// remembered (how they ended) for the life of the store.
#[derive(Clone)]
pub struct MemorySagaStore {
    inner: Arc<Mutex<Instances>>,
}

#[derive(Default)]
struct Instances {
    running: HashMap<(String, String), Running>,
    finished: HashMap<(String, String), SagaOutcome>,
}

struct Running {
    state: String,
    version: u64,
    seen: HashSet<String>,
    compensations: Vec<SagaMessage>,
    /// Cancels the instance's pending timeouts when it finishes.
    timeouts: tokio_util::sync::CancellationToken,
}

impl Instances {
    /// Whether `commit` applies to the instance as it is now.
    fn fits(&self, at: &(String, String), commit: &SagaCommit<'_>) -> bool {
        match (self.running.get(at), commit.version) {
            (None, None) => !self.finished.contains_key(at),
            (Some(running), Some(version)) => {
                running.version == version && !running.seen.contains(commit.message_id)
            }
            _ => false,
        }
    }
}

impl MemorySagaStore {
    /// An empty store.
    pub(super) fn new() -> Self {
        MemorySagaStore { inner: Arc::default() }
    }

    /// How a finished instance ended.
    pub async fn finished(&self, saga: &str, id: &str) -> Option<SagaOutcome> {
        self.inner.lock().finished.get(&(saga.to_owned(), id.to_owned())).cloned()
    }

    /// The state (JSON) of a running instance.
    pub async fn running(&self, saga: &str, id: &str) -> Option<String> {
        self.inner.lock().running.get(&(saga.to_owned(), id.to_owned())).map(|running| running.state.clone())
    }

    pub(super) fn load(&self, key: SagaKey<'_>, message_id: &str) -> SagaLoad {
        let instances = self.inner.lock();
        let at = (key.saga.to_owned(), key.id.to_owned());
        if let Some(running) = instances.running.get(&at) {
            return SagaLoad::Running {
                state: running.state.clone(),
                version: running.version,
                seen: running.seen.contains(message_id),
            };
        }
        match instances.finished.get(&at) {
            Some(outcome) => SagaLoad::Finished(outcome.clone()),
            None => SagaLoad::Absent,
        }
    }

    /// Publishes the commit's messages through `publisher`, then records it; `false`: a conflict.
    pub(super) async fn commit(
        &self,
        commit: SagaCommit<'_>,
        publisher: &Arc<dyn Publisher>,
    ) -> Result<bool> {
        let at = (commit.key.saga.to_owned(), commit.key.id.to_owned());
        let mut publish = commit.send.clone();
        {
            let instances = self.inner.lock();
            if !instances.fits(&at, &commit) {
                return Ok(false);
            }
            if matches!(commit.finish, Some(SagaOutcome::Failed(_))) {
                publish.extend(commit.compensations.iter().rev().cloned());
                if let Some(running) = instances.running.get(&at) {
                    publish.extend(running.compensations.iter().rev().cloned());
                }
            }
        }
        for SagaMessage { topic, message } in publish {
            publisher.publish(&topic, message).await?;
        }
        let mut instances = self.inner.lock();
        if !instances.fits(&at, &commit) {
            // Another step of the instance committed while this one published.
            return Ok(false);
        }
        match commit.finish {
            Some(outcome) => {
                if let Some(running) = instances.running.remove(&at) {
                    running.timeouts.cancel();
                }
                instances.finished.insert(at, outcome);
            }
            None => {
                let running = instances.running.entry(at).or_insert_with(|| Running {
                    state: String::new(),
                    version: 0,
                    seen: HashSet::new(),
                    compensations: Vec::new(),
                    timeouts: tokio_util::sync::CancellationToken::new(),
                });
                running.state = commit.state;
                running.version += 1;
                running.seen.insert(commit.message_id.to_owned());
                running.compensations.extend(commit.compensations);
                for deadline in commit.deadlines {
                    let publisher = Arc::downgrade(publisher);
                    let cancelled = running.timeouts.clone();
                    let delay = deadline.due.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = cancelled.cancelled() => {}
                            () = tokio::time::sleep(delay) => {
                                // (The router closed meanwhile: nothing to publish through.)
                                let Some(publisher) = publisher.upgrade() else { return };
                                if let Err(error) = publisher.publish(&deadline.topic, deadline.message).await {
                                    tracing::warn!(%error, topic = %deadline.topic, "memory saga store: a timeout could not be published");
                                }
                            }
                        }
                    });
                }
            }
        }
        Ok(true)
    }
}

impl fmt::Debug for MemorySagaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySagaStore").finish_non_exhaustive()
    }
}
