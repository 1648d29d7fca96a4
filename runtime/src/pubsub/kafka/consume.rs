//! One subscription: a librdkafka consumer polled by a task of its own (the poller), its
//! partitions' [`Watermark`]s, and the [`AckSink`] that settles through them.
//!
//! - The poller reads records and sends them to the subscription's stream, in runs of what
//!   librdkafka already holds (up to [`RUN`]: the stream's task wakes once per run, not once per
//!   record, which cost about a quarter of a fast consumer's time); the stream's task makes each
//!   record a delivery when asked for it ([`Run`]: the poller does only what needs librdkafka's
//!   record, and so reads faster). It never waits for the router, so librdkafka is polled (and
//!   `max.poll.interval.ms` kept) however slow the handlers are. Once [`State::max_in_flight`] deliveries are unsettled
//!   it stops reading (librdkafka keeps what it fetched, within its own queue limits) until
//!   settles bring the count down to half of it. Only if that takes longer than
//!   [`PAUSE_AFTER`] does it pause every assigned partition and go on polling (rebalances are
//!   served, `max.poll.interval.ms` is kept) until there is room. A pause costs a fetch: librdkafka
//!   drops what it had fetched for a paused partition and fetches it again on resume; pausing at
//!   every full buffer made consume-with-ack 0.06 × raw rdkafka on tansu, whose fetches are slow.
//! - Rebalance callbacks run inside the poller's reads: a revoke resets the partitions' watermarks
//!   (later acks of their deliveries are dropped, at debug level: the new owner reads them again
//!   from the committed offset); an assign starts them afresh.
//! - An ack settles in the partition's watermark; what it releases becomes the partition's offset
//!   to commit, which the poller commits every
//!   [`KafkaConfig::commit_interval`](super::KafkaConfig::commit_interval); the revoke callback
//!   commits what is pending (synchronously) before partitions go, on a rebalance and when the
//!   consumer closes. Commits are explicit, not librdkafka's auto-commit of stored offsets: tansu
//!   0.6 resumes a group one record past an offset committed that way (see the module docs).
//! - A nack (or release) is sent to the poller, which seeks the partition back: seeking from the
//!   task that reads means no record read before the seek is delivered after it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use super::codec;
use super::config::Redelivery;
use super::publish::Producer;
use crate::error::{Error, ErrorKind, Result};
use crate::message::{DeliveryInfo, DeliveryInfos, Message};
use crate::op::OpFuture;
use crate::pubsub::watermark::{Seq, Watermark};
use crate::pubsub::{AckSink, Acker, Delivery, Settle, Token};

pub(super) type KafkaConsumer = StreamConsumer<Ctx>;

/// How long a full poller stops reading before it pauses its partitions (see the module docs).
pub(super) const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// The most deliveries the poller hands over at once.
///
/// Every run handed over wakes the subscription's task (its consumer drains a run faster than
/// the poller reads the next, so it waits for each), and that wake costs the poller a system
/// call. With runs of 64 a fast consumer of 100 000 records made about 2 000 context switches
/// (raw rdkafka: 30) and read 1.16–1.25 M records/s on tansu; with runs of 512, about 350 switches
/// and 1.36–1.45 M/s (kafka-bench, medians of four invocations each). A run is only as long as
/// what librdkafka already holds, so a record that comes alone is handed over alone: longer runs
/// delay a record only behind others read with it (about 1 µs each).
const RUN: usize = 512;

/// Records accepted together, handed over to the subscription's task, which makes each a
/// [`Delivery`] when it is asked for the next one ([`Run::next`]).
///
/// The poller does only what needs the record itself (librdkafka's record is gone once the
/// poller reads on): its place in the watermark, its payload's copy, its key and headers. The
/// rest (the id parsed, the message, its acker) is left to the task that handles it: with
/// records already fetched the poller is the busier of the two threads, and how fast it reads
/// is how fast the subscription goes.
pub(super) struct Run {
    records: std::vec::IntoIter<Accepted>,
    /// The index of the next record's entry in `infos`.
    index: usize,
    infos: DeliveryInfos,
    sink: Arc<RunSink>,
}

/// One record of a [`Run`].
struct Accepted {
    id: codec::Id,
    metadata: crate::message::Metadata,
    payload: Bytes,
    partition: i32,
    offset: i64,
    seq: Seq,
    attempt: u32,
}

impl Run {
    /// The next record's delivery.
    fn next(&mut self) -> Option<Delivery> {
        let Accepted { id, metadata, payload, partition, offset, seq, attempt } = self.records.next()?;
        let state = &self.sink.0;
        let mut message = Message::from_parts(id.resolve(&state.topic, partition, offset), metadata, payload);
        message.set_delivery_info_of(&self.infos, self.index);
        self.index += 1;
        let copy = (state.redelivery == Redelivery::Republish).then(|| message.clone());
        let acker = Acker::new(self.sink.clone(), token(partition, attempt, seq), copy);
        Some(Delivery::new(message, attempt, acker))
    }
}

impl Drop for Run {
    /// Records never handed out (the subscription was dropped) are released, as their deliveries
    /// would have been.
    fn drop(&mut self) {
        for record in self.records.by_ref() {
            // Ready at once: a release sends the poller a command.
            drop(self.sink.0.settle(
                token(record.partition, record.attempt, record.seq),
                None,
                Settle::Release,
            ));
        }
    }
}

/// What a subscription's consumer, its poller and its ackers share.
pub(super) struct State {
    /// This state itself (for the tasks a settle spawns).
    me: std::sync::Weak<State>,
    pub(super) topic: String,
    /// Whether the consumer is in a group (commits offsets) or reads assigned partitions alone.
    pub(super) group: bool,
    pub(super) max_in_flight: usize,
    pub(super) commit_interval: Duration,
    pub(super) redelivery: Redelivery,
    /// For [`Redelivery::Republish`].
    pub(super) producer: Producer,
    pub(super) settling: Mutex<Settling>,
    /// Nacks and timers for the poller.
    pub(super) commands: mpsc::UnboundedSender<Command>,
    /// Deliveries sent and not settled.
    pub(super) in_flight: AtomicUsize,
    /// Whether the poller stopped reading for backpressure (`max_in_flight` unsettled).
    pub(super) full: AtomicBool,
    /// Whether the poller paused the partitions, after being full for [`PAUSE_AFTER`].
    pub(super) paused: AtomicBool,
    /// Wakes a full poller when settles make room.
    pub(super) room: Notify,
    /// How many assignments the consumer has had (a subscription returns after the first).
    pub(super) assignments: watch::Sender<u64>,
    /// Set when the poller stops: releases no longer seek.
    pub(super) closing: AtomicBool,
}

/// Under one lock: the consumer (for storing offsets; `None` once closing) and each partition.
pub(super) struct Settling {
    pub(super) consumer: Option<Arc<KafkaConsumer>>,
    pub(super) parts: HashMap<i32, Part, Partitions>,
}

/// Hashes partition numbers for [`Settling::parts`], which every delivery and every ack look up:
/// a multiply (Fibonacci hashing) instead of SipHash, whose resistance to chosen keys buys
/// nothing for numbers the broker hands out.
type Partitions = std::hash::BuildHasherDefault<PartitionHasher>;

/// See [`Partitions`].
#[derive(Default)]
pub(super) struct PartitionHasher(u64);

impl std::hash::Hasher for PartitionHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_i32(&mut self, partition: i32) {
        self.0 = u64::from(partition as u32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// One partition of the subscription.
#[derive(Default)]
pub(super) struct Part {
    watermark: Watermark<i64>,
    assigned: bool,
    /// Bumped whenever the watermark is reset (revoke, assign, seek), so that a timer set before
    /// does nothing after.
    epoch: u64,
    /// Nacks of each offset seen by this process, for attempt counts.
    nacks: HashMap<i64, u32>,
    /// After a seek to this offset: the next record must be this one; any other was read before
    /// the seek took hold (or the seek failed) and is dropped.
    expect: Option<Expect>,
    /// Paused until a delayed nack's timer fires.
    held: bool,
    /// The offset after the last record delivered.
    next: Option<i64>,
    /// The offset to commit (after every record settled in order), and the one last committed.
    commit: Option<i64>,
    committed: Option<i64>,
}

#[derive(Clone, Copy)]
struct Expect {
    offset: i64,
    /// When the seek was last sent, and how many times.
    sent: Instant,
    tries: u32,
}

/// What the poller is asked to do.
pub(super) enum Command {
    /// Seek `partition` back to the delivery at `seq` (after `delay`), counting a nack.
    Redeliver { partition: i32, seq: Seq, delay: Option<Duration>, count: bool },
    /// A delayed nack's time has come.
    Resume { partition: i32, epoch: u64, offset: i64 },
}

/// The consumer's context: rebalance callbacks and librdkafka's logs.
pub(super) struct Ctx {
    pub(super) state: Arc<State>,
}

impl ClientContext for Ctx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        super::log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(topic = %self.state.topic, %error, reason, "kafka consumer error");
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                // What was settled is committed before the partitions go to another member.
                if let Some(pending) = self.state.pending_commits() {
                    if let Err(error) = consumer.commit(&pending, CommitMode::Sync) {
                        tracing::warn!(topic = %self.state.topic, %error, "kafka commit before a revoke failed; the new owner reads those messages again");
                    }
                }
                let mut settling = self.state.settling.lock();
                let mut dropped = 0;
                for element in list.elements_for_topic(&self.state.topic) {
                    let part = settling.parts.entry(element.partition()).or_default();
                    dropped += part.watermark.len();
                    part.reset();
                    part.assigned = false;
                    part.nacks.clear();
                }
                tracing::debug!(
                    topic = %self.state.topic,
                    partitions = list.count(),
                    unsettled = dropped,
                    "kafka partitions revoked; acks that arrive for them later are dropped"
                );
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(topic = %self.state.topic, %error, "kafka rebalance failed");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            {
                let mut settling = self.state.settling.lock();
                for element in list.elements_for_topic(&self.state.topic) {
                    let part = settling.parts.entry(element.partition()).or_default();
                    part.reset();
                    part.assigned = true;
                }
            }
            // A partition paused before (backpressure, a delayed nack) starts paused only while
            // the subscription is paused.
            let result = if self.state.paused.load(Ordering::SeqCst) {
                consumer.pause(list)
            } else {
                consumer.resume(list)
            };
            if let Err(error) = result {
                tracing::debug!(topic = %self.state.topic, %error, "kafka pause/resume after assign");
            }
            tracing::debug!(topic = %self.state.topic, partitions = list.count(), "kafka partitions assigned");
            self.state.assignments.send_modify(|n| *n += 1);
        }
    }
}

impl Part {
    fn reset(&mut self) {
        self.watermark.reset();
        self.epoch += 1;
        self.expect = None;
        self.held = false;
        self.next = None;
        self.commit = None;
        self.committed = None;
    }
}

fn token(partition: i32, attempt: u32, seq: Seq) -> Token {
    Token::pair((u64::from(partition as u32) << 32) | u64::from(attempt), seq.get())
}

fn token_parts(token: Token) -> (i32, u32, Seq) {
    let (high, low) = token.pair_parts();
    ((high >> 32) as u32 as i32, high as u32, Seq::from_raw(low))
}

impl State {
    /// The count of unsettled deliveries at which a paused poller resumes.
    fn resume_at(&self) -> usize {
        self.max_in_flight / 2
    }

    /// The offsets settled and not committed yet, marked committed (`None`: nothing to commit,
    /// or no group to commit for).
    fn pending_commits(&self) -> Option<TopicPartitionList> {
        if !self.group {
            return None;
        }
        let mut settling = self.settling.lock();
        let mut list = TopicPartitionList::new();
        for (&partition, part) in &mut settling.parts {
            if let Some(offset) = part.commit.filter(|_| part.assigned && part.commit != part.committed) {
                if list.add_partition_offset(&self.topic, partition, Offset::Offset(offset)).is_ok() {
                    part.committed = Some(offset);
                }
            }
        }
        (list.count() > 0).then_some(list)
    }

    /// Settles `seq` of `partition` in its watermark; what it releases is to be committed.
    fn settle_done(&self, partition: i32, seq: Seq) {
        let mut guard = self.settling.lock();
        let settling = &mut *guard;
        let Some(part) = settling.parts.get_mut(&partition) else { return };
        let nacks = &mut part.nacks;
        let mut last = None;
        let pending = part.watermark.settle_with(seq, |offset| {
            if !nacks.is_empty() {
                nacks.remove(&offset);
            }
            last = Some(offset);
        });
        if !pending {
            tracing::debug!(
                topic = %self.topic,
                partition,
                "kafka settle dropped: its partition was revoked or sought back since"
            );
        } else if let Some(last) = last {
            tracing::trace!(topic = %self.topic, partition, offset = last + 1, "kafka offset to commit");
            part.commit = Some(last + 1);
        }
    }

    fn redeliver(&self, partition: i32, seq: Seq, delay: Option<Duration>, count: bool) {
        if self.closing.load(Ordering::SeqCst) {
            return;
        }
        let _ = self.commands.send(Command::Redeliver { partition, seq, delay, count });
    }
}

impl AckSink for State {
    fn settle(&self, token: Token, message: Option<Message>, how: Settle) -> OpFuture<'static> {
        let (partition, attempt, seq) = token_parts(token);
        let left = self.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        if left <= self.resume_at() && self.full.load(Ordering::SeqCst) {
            self.room.notify_one();
        }
        match how {
            Settle::Ack | Settle::Reject(_) => self.settle_done(partition, seq),
            Settle::Release => self.redeliver(partition, seq, None, false),
            Settle::Nack(delay) => match (self.redelivery, message) {
                (Redelivery::Republish, Some(message)) => {
                    return self.republish(partition, seq, attempt, delay, message);
                }
                _ => self.redeliver(partition, seq, delay, true),
            },
        }
        OpFuture::ready(Ok(()))
    }
}

impl State {
    /// [`Redelivery::Republish`]: a copy to the end of the topic (after `delay`), then the
    /// original settled; if the copy cannot be published, a seek instead.
    fn republish(
        &self,
        partition: i32,
        seq: Seq,
        attempt: u32,
        delay: Option<Duration>,
        message: Message,
    ) -> OpFuture<'static> {
        let this = self.self_arc();
        let work = async move {
            if let Some(delay) = delay.filter(|d| !d.is_zero()) {
                tokio::time::sleep(delay).await;
            }
            match this.producer.send(&this.topic, message, Some(attempt)).await {
                Ok(_) => this.settle_done(partition, seq),
                Err(error) => {
                    tracing::warn!(topic = %this.topic, %error, "kafka republish of a nacked message failed; seeking back instead");
                    this.redeliver(partition, seq, None, true);
                }
            }
        };
        // A delayed copy must not hold up the router: it goes on by itself.
        tokio::spawn(work);
        OpFuture::ready(Ok(()))
    }

    fn self_arc(&self) -> Arc<State> {
        self.me.upgrade().expect("a settle holds the state")
    }
}

/// Consumers of dropped subscriptions still closing, by (topic, group): a new member of the same
/// group waits for them, so that it joins once they have left (tansu 0.6 gives a member that
/// joins while another leaves no partitions, and never rebalances again).
pub(super) type Closing = Arc<Mutex<HashMap<(String, String), Vec<watch::Receiver<bool>>>>>;

/// Registers a dropped subscription's consumer in [`Closing`] until it has closed.
struct DropGuard {
    key: Option<(String, String)>,
    closed: watch::Receiver<bool>,
    closing: Closing,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut closing = self.closing.lock();
            let list = closing.entry(key).or_default();
            list.retain(|closed| !*closed.borrow());
            list.push(self.closed.clone());
        }
    }
}

/// Waits (up to `limit`) for the consumers of `topic` and `group` that are closing: whether they
/// all closed.
async fn wait_for_closing(closing: &Closing, topic: &str, group: &str, limit: Duration) -> bool {
    let waiting: Vec<watch::Receiver<bool>> = {
        let mut closing = closing.lock();
        let key = (topic.to_owned(), group.to_owned());
        let Some(list) = closing.get_mut(&key) else { return true };
        list.retain(|closed| !*closed.borrow());
        let waiting = list.clone();
        if list.is_empty() {
            closing.remove(&key);
        }
        waiting
    };
    let all = async {
        for mut closed in waiting {
            let _ = closed.wait_for(|closed| *closed).await;
        }
    };
    tokio::time::timeout(limit, all).await.is_ok()
}

/// A subscribe phase (closing members leaving, the group's join) or a consumer's close slower
/// than this is logged at warn level, when it passes this mark (a test or a caller that gives up
/// later still sees why): joins take milliseconds, a rebalance a few seconds.
const SLOW_JOIN: Duration = Duration::from_secs(10);

/// How long a subscription waits for this connection's closing members of its group to leave
/// before it joins anyway (at most [`KafkaConfig::assign_timeout`](super::KafkaConfig): see
/// [`closing_limit`]).
///
/// On Kafka the wait saves the group a rebalance: a member still closing takes part in the
/// rebalance that the join starts (and commits what was settled before its partitions are
/// revoked). On tansu 0.6 it also keeps a joiner from getting no partitions (a member leaving
/// during a join; docs/backends.md). Past the session timeout (10 s) the coordinator has dropped
/// a member that stopped heartbeating, so a close that is still running is stuck in librdkafka
/// (a commit or a leave that gets no answer), and waiting on it would only hold the new member
/// back.
const CLOSING_WAIT: Duration = Duration::from_secs(15);

/// The wait for closing members under a given `assign_timeout`: [`CLOSING_WAIT`], or less when
/// the whole subscribe may take less.
fn closing_limit(assign_timeout: Duration) -> Duration {
    assign_timeout.min(CLOSING_WAIT)
}

/// Awaits `fut`; if it is not done after [`SLOW_JOIN`], calls `slow` once and goes on waiting.
async fn warn_when_slow<T>(fut: impl std::future::Future<Output = T>, slow: impl FnOnce()) -> T {
    tokio::pin!(fut);
    match tokio::time::timeout(SLOW_JOIN, &mut fut).await {
        Ok(value) => value,
        Err(_) => {
            slow();
            fut.await
        }
    }
}

/// What [`subscribe`] needs from its [`KafkaPubSub`](super::KafkaPubSub).
pub(super) struct Plan<'a> {
    /// Consumers of this connection's dropped subscriptions that are still closing.
    pub(super) closing: Closing,
    pub(super) config: &'a super::KafkaConfig,
    pub(super) producer: Producer,
    /// Cancelled when the subscriber closes.
    pub(super) cancel: CancellationToken,
    pub(super) tasks: tokio_util::task::TaskTracker,
}

/// Subscribes to `topic` (which exists): returns once the consumer has its partitions.
pub(super) async fn subscribe(
    plan: Plan<'_>,
    topic: &str,
    options: &crate::pubsub::SubscribeOptions,
) -> Result<crate::pubsub::Subscription> {
    use crate::pubsub::StartFrom;

    let config = plan.config;
    let started = std::time::Instant::now();
    if let Some(group) = &options.group {
        let left = wait_for_closing(&plan.closing, topic, group, closing_limit(config.assign_timeout)).await;
        let waited = started.elapsed();
        if !left {
            tracing::warn!(
                topic,
                group,
                ?waited,
                "kafka subscribe: this connection's closing members of the group are still closing; \
                 joining without waiting for them"
            );
        } else if waited > SLOW_JOIN {
            tracing::warn!(
                topic,
                group,
                ?waited,
                "kafka subscribe: this connection's closing members of the group took long to leave"
            );
        } else {
            tracing::debug!(
                topic,
                group,
                ?waited,
                "kafka subscribe: this connection's closing members of the group are gone"
            );
        }
    }
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let state = Arc::new_cyclic(|me| State {
        me: me.clone(),
        topic: topic.to_owned(),
        group: options.group.is_some(),
        max_in_flight: options.max_in_flight.unwrap_or(config.max_in_flight).max(1),
        commit_interval: config.commit_interval.max(Duration::from_millis(1)),
        redelivery: config.redelivery,
        producer: plan.producer,
        settling: Mutex::new(Settling { consumer: None, parts: HashMap::default() }),
        commands,
        in_flight: AtomicUsize::new(0),
        full: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        room: Notify::new(),
        assignments: watch::channel(0).0,
        closing: AtomicBool::new(false),
    });
    let solo = format!("millstream-solo-{}", uuid::Uuid::now_v7().simple());
    let mut ours: Vec<(&str, &str)> = vec![
        ("enable.auto.commit", "false"),
        ("enable.partition.eof", "false"),
        ("fetch.wait.max.ms", "10"),
        ("fetch.queue.backoff.ms", "20"),
        ("session.timeout.ms", "10000"),
    ];
    match &options.group {
        Some(group) => {
            let reset = match options.start {
                StartFrom::Latest => "latest",
                StartFrom::Time(_) => {
                    return Err(Error::new(
                        ErrorKind::Config,
                        "kafka: StartFrom::Time is supported for subscriptions without a group; a group \
                         starts from its committed offsets, or the earliest or latest one",
                    ));
                }
                _ => "earliest",
            };
            ours.extend([("group.id", group.as_str()), ("auto.offset.reset", reset)]);
        }
        // librdkafka wants a group id even to read assigned partitions; this one never joins
        // (nor commits).
        None => ours.push(("group.id", solo.as_str())),
    }
    let consumer: KafkaConsumer = config
        .client_config(&ours)
        .create_with_context(Ctx { state: state.clone() })
        .map_err(|error| Error::with_source(ErrorKind::Config, error).context("kafka consumer"))?;
    let consumer = Arc::new(consumer);
    match &options.group {
        Some(_) => consumer.subscribe(&[topic]).map_err(|error| backend(error, topic, "subscribe"))?,
        None => {
            let assignment = {
                let consumer = consumer.clone();
                let (topic, start, timeout) = (topic.to_owned(), options.start, config.assign_timeout);
                tokio::task::spawn_blocking(move || groupless_assignment(&consumer, &topic, start, timeout))
                    .await
                    .map_err(|error| Error::msg(format!("kafka assignment task: {error}")))??
            };
            consumer.assign(&assignment).map_err(|error| backend(error, topic, "assign"))?;
            let mut settling = state.settling.lock();
            for element in assignment.elements() {
                settling.parts.entry(element.partition()).or_default().assigned = true;
            }
            drop(settling);
            state.assignments.send_modify(|n| *n += 1);
        }
    }
    state.settling.lock().consumer = Some(consumer.clone());
    let (out, deliveries) = mpsc::unbounded_channel();
    let cancel = plan.cancel.child_token();
    let cancel_poller = cancel.clone();
    let mut assigned = state.assignments.subscribe();
    let (closed_tx, closed) = watch::channel(false);
    plan.tasks.spawn(async move {
        poll(state, consumer, commands_rx, out, cancel_poller).await;
        let _ = closed_tx.send(true);
    });
    let joining = std::time::Instant::now();
    // A bool, not the guard that `wait_for` returns (it must not be held across an await).
    let assigned_in_time = async {
        matches!(tokio::time::timeout(config.assign_timeout, assigned.wait_for(|n| *n > 0)).await, Ok(Ok(_)))
    };
    let assigned = warn_when_slow(assigned_in_time, || {
        tracing::warn!(
            topic,
            group = options.group.as_deref(),
            waiting = ?SLOW_JOIN,
            limit = ?config.assign_timeout,
            "kafka subscribe: the group has given no partitions yet; still waiting"
        );
    })
    .await;
    let (group, joining, total) = (options.group.as_deref(), joining.elapsed(), started.elapsed());
    if !assigned || joining > SLOW_JOIN {
        tracing::warn!(
            topic,
            group,
            assigned,
            ?joining,
            ?total,
            "kafka subscribe: the group was slow to give partitions"
        );
    } else {
        tracing::debug!(topic, group, assigned, ?joining, ?total, "kafka subscribe: partitions assigned");
    }
    if !assigned {
        cancel.cancel();
        return Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "kafka: the group gave the subscription to {topic} no partitions within {:?} \
                 (KafkaConfig::assign_timeout); is the broker reachable?",
                config.assign_timeout
            ),
        ));
    }
    let mut deliveries = deliveries;
    let mut run: Option<Run> = None;
    let guard = DropGuard {
        key: options.group.as_ref().map(|group| (topic.to_owned(), group.clone())),
        closed,
        closing: plan.closing,
    };
    Ok(crate::pubsub::Subscription::new(futures_util::stream::poll_fn(move |cx| {
        let _owned = &guard;
        loop {
            if let Some(delivery) = run.as_mut().and_then(Run::next) {
                return std::task::Poll::Ready(Some(Ok(delivery)));
            }
            match deliveries.poll_recv(cx) {
                std::task::Poll::Ready(Some(next)) => run = Some(next),
                other => return other.map(|_| None),
            }
        }
    })))
}

fn backend(error: KafkaError, topic: &str, what: &str) -> Error {
    Error::with_source(ErrorKind::Backend, error).context(format!("kafka {what} {topic}"))
}

/// Every partition of `topic`, each at the offset `start` names (the end by default, resolved
/// now, so that a message published once the subscription returns is never skipped).
fn groupless_assignment(
    consumer: &KafkaConsumer,
    topic: &str,
    start: crate::pubsub::StartFrom,
    timeout: Duration,
) -> Result<TopicPartitionList> {
    use crate::pubsub::StartFrom;

    let metadata =
        consumer.fetch_metadata(Some(topic), timeout).map_err(|e| backend(e, topic, "metadata of"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::new(ErrorKind::Config, format!("kafka: topic {topic} does not exist")));
    }
    let mut list = TopicPartitionList::new();
    for &partition in &partitions {
        let offset = match start {
            StartFrom::Earliest => Offset::Beginning,
            StartFrom::Time(at) => {
                let millis = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
                Offset::Offset(millis)
            }
            _ => {
                let (_, high) = consumer
                    .fetch_watermarks(topic, partition, timeout)
                    .map_err(|e| backend(e, topic, "end offsets of"))?;
                Offset::Offset(high)
            }
        };
        list.add_partition_offset(topic, partition, offset)
            .map_err(|e| backend(e, topic, "assignment of"))?;
    }
    if let StartFrom::Time(_) = start {
        list =
            consumer.offsets_for_times(list, timeout).map_err(|e| backend(e, topic, "offsets by time of"))?;
    }
    Ok(list)
}

/// The poller: reads records, runs commands, pauses and resumes; on its way out closes the
/// consumer (leaving the group after a last commit of the stored offsets).
async fn poll(
    state: Arc<State>,
    consumer: Arc<KafkaConsumer>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    out: mpsc::UnboundedSender<Run>,
    cancel: CancellationToken,
) {
    let mut last_error: Option<Instant> = None;
    // Set when the poller stops reading, full: then it pauses once this fires. (One timer, reset
    // when needed: not a clock reading for every record.)
    let mut full_since = false;
    let pause_timer = tokio::time::sleep(PAUSE_AFTER);
    tokio::pin!(pause_timer);
    // The records of a run, read before they are accepted together (kept for the next run).
    let mut records: Vec<BorrowedMessage<'_>> = Vec::with_capacity(RUN);
    // One stream for the poller's life: `StreamConsumer::recv` registers (and then removes) a
    // waker slot under a lock for every record it reads.
    let mut stream = consumer.stream();
    let mut commits = tokio::time::interval(state.commit_interval);
    commits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            () = out.closed() => break,
            _ = commits.tick() => {
                if let Some(pending) = state.pending_commits() {
                    if let Err(error) = consumer.commit(&pending, CommitMode::Async) {
                        tracing::debug!(topic = %state.topic, %error, "kafka commit failed; tried again at the next tick");
                        for part in state.settling.lock().parts.values_mut() {
                            part.committed = None;
                        }
                    }
                }
            }
            Some(command) = commands.recv() => run(&state, &consumer, command),
            () = state.room.notified(), if state.full.load(Ordering::SeqCst) => {
                if state.in_flight.load(Ordering::SeqCst) <= state.resume_at() {
                    state.full.store(false, Ordering::SeqCst);
                    full_since = false;
                    if state.paused.swap(false, Ordering::SeqCst) {
                        set_paused(&state, &consumer, false);
                    }
                }
            }
            // Full for a while: pause, so that polling goes on without reading.
            () = &mut pause_timer, if full_since && !state.paused.load(Ordering::SeqCst) => {
                state.paused.store(true, Ordering::SeqCst);
                set_paused(&state, &consumer, true);
            }
            record = stream.next(), if !state.full.load(Ordering::SeqCst) || state.paused.load(Ordering::SeqCst) => match record {
                Some(Ok(record)) => {
                    // With it, what librdkafka already holds (without waiting), up to a run of
                    // RUN (and the room left): the subscription wakes once per run, and the
                    // partitions are locked once per run, not once per record.
                    let room = state.max_in_flight.saturating_sub(state.in_flight.load(Ordering::Acquire));
                    records.push(record);
                    while records.len() < RUN.min(room) {
                        match futures_util::FutureExt::now_or_never(stream.next()) {
                            Some(Some(Ok(record))) => records.push(record),
                            Some(Some(Err(error))) => {
                                read_failed(&state, &mut last_error, &error);
                                break;
                            }
                            Some(None) | None => break,
                        }
                    }
                    let run = accept(&state, &consumer, &records);
                    records.clear();
                    if run.is_some_and(|run| out.send(run).is_err()) {
                        break;
                    }
                    if state.in_flight.load(Ordering::SeqCst) >= state.max_in_flight
                        && !state.full.swap(true, Ordering::SeqCst)
                    {
                        // Full is set before the count is read again: a settle that read `full`
                        // before it was set made room before this read, and this read sees it
                        // (else the settles that made room would all have missed `full`, and
                        // none would wake the poller).
                        if state.in_flight.load(Ordering::SeqCst) <= state.resume_at() {
                            state.full.store(false, Ordering::SeqCst);
                        } else {
                            full_since = true;
                            pause_timer.as_mut().reset(tokio::time::Instant::now() + PAUSE_AFTER);
                        }
                    }
                }
                Some(Err(error)) => read_failed(&state, &mut last_error, &error),
                // librdkafka's streams never end.
                None => break,
            },
        }
    }
    drop(records);
    drop(stream);
    state.closing.store(true, Ordering::SeqCst);
    let taken = state.settling.lock().consumer.take();
    drop(taken);
    // Closing blocks (a last commit, leaving the group): off the runtime's threads. Acks being
    // stored hold the consumer for a moment only.
    let topic = state.topic.clone();
    drop(state);
    let closing = tokio::task::spawn_blocking(move || {
        let mut consumer = consumer;
        loop {
            match Arc::try_unwrap(consumer) {
                Ok(last) => {
                    drop(last);
                    return;
                }
                Err(shared) => {
                    consumer = shared;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    });
    let closed = warn_when_slow(closing, || {
        tracing::warn!(
            %topic,
            waiting = ?SLOW_JOIN,
            "kafka consumer: closing (a last commit, leaving the group) is slow; still waiting"
        );
    })
    .await;
    if let Err(error) = closed {
        tracing::warn!(%topic, %error, "kafka consumer close failed");
    }
}

/// Reports a failed read (librdkafka reconnects by itself): at most once a second.
fn read_failed(state: &State, last: &mut Option<Instant>, error: &KafkaError) {
    if last.is_none_or(|at| at.elapsed() > Duration::from_secs(1)) {
        tracing::warn!(topic = %state.topic, %error, "kafka consumer: read failed");
        *last = Some(Instant::now());
    }
}

/// Pauses (or resumes) every assigned partition, except those held by a delayed nack.
///
/// A resumed partition is also sought to the offset after its last delivery (what librdkafka
/// would resume from anyway), so that resuming never depends on librdkafka's saved position.
fn set_paused(state: &State, consumer: &KafkaConsumer, pause: bool) {
    let (list, positions) = {
        let settling = state.settling.lock();
        let mut list = TopicPartitionList::new();
        let mut positions = Vec::new();
        for (&partition, part) in &settling.parts {
            if part.assigned && !part.held {
                list.add_partition(&state.topic, partition);
                if let (false, Some(next)) = (pause, part.next) {
                    positions.push((partition, next));
                }
            }
        }
        (list, positions)
    };
    tracing::debug!(
        topic = %state.topic,
        pause,
        partitions = list.count(),
        in_flight = state.in_flight.load(Ordering::SeqCst),
        "kafka backpressure"
    );
    if list.count() == 0 {
        return;
    }
    let result = if pause { consumer.pause(&list) } else { consumer.resume(&list) };
    if let Err(error) = result {
        tracing::debug!(topic = %state.topic, %error, pause, "kafka pause/resume");
    }
    for (partition, next) in positions {
        seek(consumer, &state.topic, partition, next);
    }
}

/// The ackers of one run's deliveries: they settle through the subscription's [`State`].
///
/// A sink of its own per run, rather than a clone of the state's `Arc` per delivery: the poller
/// counts a run's references up before handing it over and the task that acks counts them down
/// after, each on its own counter. One shared counter went back and forth between the two threads'
/// caches on every delivery (the poller taking a reference while the other dropped one).
struct RunSink(Arc<State>);

impl AckSink for RunSink {
    fn settle(&self, token: Token, message: Option<Message>, how: Settle) -> OpFuture<'static> {
        self.0.settle(token, message, how)
    }
}

/// The deliveries of records just read, in order; records read before a seek took hold are
/// dropped. The partitions are locked once for the run.
///
/// A run's deliveries share their allocations, each freed with the last delivery that uses it:
/// their acker's sink ([`RunSink`]), their [`DeliveryInfos`], and buffers of up to [`CHUNK`]
/// bytes holding the payloads of up to [`SHARED_PAYLOAD`] bytes. Allocations of their own, made
/// here and freed by the task that handles them on another thread, cost jemalloc about 250
/// instructions a record (its caches are per thread: one thread's frees fill its cache, the
/// other's allocations empty its own).
fn accept(state: &Arc<State>, consumer: &KafkaConsumer, records: &[BorrowedMessage<'_>]) -> Option<Run> {
    // Each record's place in its partition's watermark and the nacks it had, or `None`; and the
    // size of the kept payloads that share buffers.
    let mut marks: smallvec::SmallVec<[Option<(Seq, u32)>; 64]> = smallvec::SmallVec::new();
    let (mut kept, mut shared) = (0, 0);
    {
        let mut settling = state.settling.lock();
        // A run's records come a partition after another: looked up once per partition.
        let mut current: Option<(i32, &mut Part)> = None;
        for record in records {
            let partition = record.partition();
            let part = match current.take() {
                Some((at, part)) if at == partition => part,
                _ => settling.parts.entry(partition).or_default(),
            };
            let mark = mark(state, consumer, part, partition, record.offset());
            if mark.is_some() {
                kept += 1;
                shared += shared_len(record.payload());
            }
            marks.push(mark);
            current = Some((partition, part));
        }
    }
    if kept == 0 {
        return None;
    }
    let mut infos = Vec::with_capacity(kept);
    let mut accepted = Vec::with_capacity(kept);
    // The payloads' buffer: filled up to CHUNK, then a new one (sized for what is left).
    let mut chunk = BytesMut::new();
    let kept_records =
        records.iter().zip(&marks).filter_map(|(record, mark)| mark.map(|mark| (record, mark)));
    for (record, (seq, nacks)) in kept_records {
        infos.push(info(record));
        let payload = match record.payload().unwrap_or_default() {
            payload if shared_len(Some(payload)) > 0 => {
                if chunk.capacity() - chunk.len() < payload.len() {
                    chunk = BytesMut::with_capacity(shared.min(CHUNK));
                }
                shared -= payload.len();
                chunk.extend_from_slice(payload);
                chunk.split().freeze()
            }
            payload => Bytes::copy_from_slice(payload),
        };
        let codec::Decoded { id, metadata, attempts } = codec::decode(record);
        let (partition, offset, attempt) = (record.partition(), record.offset(), 1 + attempts + nacks);
        accepted.push(Accepted { id, metadata, payload, partition, offset, seq, attempt });
    }
    state.in_flight.fetch_add(accepted.len(), Ordering::SeqCst);
    Some(Run {
        records: accepted.into_iter(),
        index: 0,
        infos: DeliveryInfos::new(infos),
        sink: Arc::new(RunSink(state.clone())),
    })
}

/// Payloads up to this size share a buffer with their run's others (see [`accept`]); a larger one
/// gets an allocation of its own.
const SHARED_PAYLOAD: usize = 2048;

/// The most bytes of payloads one shared buffer holds: a message kept long keeps at most this
/// much of its run's payloads alive.
const CHUNK: usize = 64 * 1024;

/// How many bytes `payload` takes in its run's shared buffer: 0 when empty or too large.
fn shared_len(payload: Option<&[u8]>) -> usize {
    payload.map_or(0, |p| if p.len() <= SHARED_PAYLOAD { p.len() } else { 0 })
}

/// Where `record` came from.
fn info(record: &BorrowedMessage<'_>) -> DeliveryInfo {
    let mut info = DeliveryInfo::new().partition(record.partition() as u32).offset(record.offset() as u64);
    if let Some(millis) = record.timestamp().to_millis().filter(|m| *m >= 0) {
        info = info.timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(millis as u64));
    }
    info
}

/// Records the record at `offset` of `partition` in the partition's watermark: its place and the nacks it
/// had, or `None` when it must be dropped (its partition is held, or it was read before a seek).
fn mark(
    state: &State,
    consumer: &KafkaConsumer,
    part: &mut Part,
    partition: i32,
    offset: i64,
) -> Option<(Seq, u32)> {
    if part.held {
        return None;
    }
    if let Some(mut expect) = part.expect {
        if offset == expect.offset {
            part.expect = None;
        } else {
            // Read before the seek took hold, or the seek failed: try it again now and then,
            // and give up on an offset that is gone (retention) after ten tries.
            if expect.sent.elapsed() >= Duration::from_millis(500) {
                if expect.tries >= 10 {
                    tracing::warn!(topic = %state.topic, partition, expected = expect.offset, offset, "kafka: the offset sought back to is gone; going on");
                    part.expect = None;
                } else {
                    expect.sent = Instant::now();
                    expect.tries += 1;
                    part.expect = Some(expect);
                    seek(consumer, &state.topic, partition, expect.offset);
                }
            }
            if part.expect.is_some() {
                return None;
            }
        }
    }
    part.next = Some(offset + 1);
    tracing::trace!(topic = %state.topic, partition, offset, "kafka delivery");
    Some((part.watermark.deliver(offset), part.nacks.get(&offset).copied().unwrap_or(0)))
}

fn seek(consumer: &KafkaConsumer, topic: &str, partition: i32, offset: i64) {
    if let Err(error) = consumer.seek(topic, partition, Offset::Offset(offset), Duration::ZERO) {
        tracing::debug!(topic, partition, offset, %error, "kafka seek failed; tried again on the next record");
    }
}

/// Runs a command in the poller.
fn run(state: &State, consumer: &KafkaConsumer, command: Command) {
    let mut settling = state.settling.lock();
    match command {
        Command::Redeliver { partition, seq, delay, count } => {
            let Some(part) = settling.parts.get_mut(&partition) else { return };
            let Some(&offset) = part.watermark.get(seq) else {
                tracing::debug!(topic = %state.topic, partition, "kafka nack dropped: its partition was revoked or sought back since");
                return;
            };
            tracing::trace!(topic = %state.topic, partition, offset, count, "kafka seek back");
            if count {
                *part.nacks.entry(offset).or_default() += 1;
            }
            // Everything read after it comes again behind it: their settles change nothing.
            part.reset();
            let mut list = TopicPartitionList::new();
            list.add_partition(&state.topic, partition);
            match delay.filter(|d| !d.is_zero()) {
                Some(delay) => {
                    part.held = true;
                    let epoch = part.epoch;
                    if let Err(error) = consumer.pause(&list) {
                        tracing::debug!(topic = %state.topic, partition, %error, "kafka pause for a delayed nack");
                    }
                    let commands = state.commands.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = commands.send(Command::Resume { partition, epoch, offset });
                    });
                }
                None => {
                    part.expect = Some(Expect { offset, sent: Instant::now(), tries: 0 });
                    seek(consumer, &state.topic, partition, offset);
                }
            }
        }
        Command::Resume { partition, epoch, offset } => {
            let Some(part) = settling.parts.get_mut(&partition) else { return };
            if part.epoch != epoch || !part.assigned {
                return;
            }
            part.held = false;
            part.expect = Some(Expect { offset, sent: Instant::now(), tries: 0 });
            seek(consumer, &state.topic, partition, offset);
            if !state.paused.load(Ordering::SeqCst) {
                let mut list = TopicPartitionList::new();
                list.add_partition(&state.topic, partition);
                if let Err(error) = consumer.resume(&list) {
                    tracing::debug!(topic = %state.topic, partition, %error, "kafka resume after a delayed nack");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    fn hash(partition: i32) -> u64 {
        Partitions::default().hash_one(partition)
    }

    #[test]
    fn partitions_hash_apart_in_the_bits_a_map_uses() {
        // hashbrown picks the bucket from the low bits and tags entries with the top 7: both
        // must tell nearby partition numbers apart.
        let hashes: Vec<u64> = (0..4096).map(hash).collect();
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 0xfff).collect();
        assert_eq!(low.len(), 4096, "the low 12 bits of partitions 0..4096 are distinct");
        let tags: std::collections::HashSet<u64> = hashes[..64].iter().map(|h| h >> 57).collect();
        assert!(tags.len() > 32, "the first 64 partitions spread over the tags: {}", tags.len());
        assert_ne!(hash(-1), hash(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_stuck_closing_holds_the_next_subscription_back_for_a_bounded_time() {
        // The bound: 15 s under the default assign timeout (60 s), never more than that timeout.
        assert_eq!(closing_limit(crate::pubsub::kafka::KafkaConfig::new("b").assign_timeout), CLOSING_WAIT);
        assert_eq!(CLOSING_WAIT, Duration::from_secs(15));
        assert_eq!(closing_limit(Duration::from_secs(5)), Duration::from_secs(5));
        let closing = Closing::default();
        let key = ("t".to_owned(), "g".to_owned());
        let (gone_tx, gone) = watch::channel(false);
        let (stuck_tx, stuck) = watch::channel(false);
        closing.lock().insert(key.clone(), vec![gone, stuck]);
        gone_tx.send(true).expect("receiver kept");
        let started = tokio::time::Instant::now();
        let limit = closing_limit(Duration::from_secs(60));
        assert!(!wait_for_closing(&closing, "t", "g", limit).await, "one member never closed");
        assert_eq!(started.elapsed(), CLOSING_WAIT);
        // The closed member is forgotten; the stuck one is still waited for, and once it is gone
        // the next subscription does not wait at all.
        assert_eq!(closing.lock()[&key].len(), 1);
        stuck_tx.send(true).expect("receiver kept");
        let started = tokio::time::Instant::now();
        assert!(wait_for_closing(&closing, "t", "g", CLOSING_WAIT).await);
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(!closing.lock().contains_key(&key), "an empty list is removed");
        assert!(wait_for_closing(&closing, "other", "g", CLOSING_WAIT).await, "nothing to wait for");
    }
}
