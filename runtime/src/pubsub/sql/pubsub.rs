//! [`SqlPubSub`]: opening the database, the schema and topics, and what the publishing and
//! subscribing halves share ([`Inner`]), including the in-process wake-ups of subscriptions.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures_core::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::SqlConfig;
use super::db::{backend_error, millis, now_ms, reconnecting, Dialect, Pool};
use super::ops::dispatch;
use super::queries::Queries;
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::pubsub::check_size;

/// How long a connection of the pools this backend opens may have been idle and still be handed
/// out without a ping first. sqlx pings each connection when it goes back to the pool (a broken
/// one is closed there) and, by default, again before handing it out: a round trip per publish
/// or ack, which halves a single publish's speed. A connection in steady use skips the second
/// ping; one idle for longer (which a database restart or an idle timeout would have cut) is
/// pinged. A connection cut in the short window between is a transient failure: a publish or
/// an ack tries again (on another connection), and so do the topic and group statements.
#[cfg(any(feature = "postgres", feature = "mysql"))]
const PING_AFTER_IDLE: Duration = Duration::from_millis(250);

/// The pool's check before it hands a connection out: a ping if it was idle for
/// [`PING_AFTER_IDLE`] or more (a failed ping closes it, and the pool takes another).
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn ping_if_idle<C: sqlx::Connection>(
    conn: &mut C,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> futures_core::future::BoxFuture<'_, std::result::Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if meta.idle_for >= PING_AFTER_IDLE {
            conn.ping().await?;
        }
        Ok(true)
    })
}

/// The durable SQL pub/sub (SQLite, PostgreSQL, MySQL / MariaDB). Cheap to clone.
///
/// ```no_run
/// # use millstream::pubsub::sql::{SqlPubSub, SqlConfig};
/// # use millstream::{Message, Publisher, Subscriber, SubscribeOptions};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
/// let pubsub = SqlPubSub::connect("sqlite:app.db", SqlConfig::default()).await?;
/// let mut orders = pubsub.subscribe("orders", SubscribeOptions::group("billing")).await?;
/// pubsub.publish("orders", Message::new(r#"{"id":1}"#)).await?;
/// let delivery = orders.next().await.expect("open")?;
/// delivery.ack().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqlPubSub {
    pub(super) inner: Arc<Inner>,
}

/// SQLite through [`SqlPubSub`]: embedded and durable (`sqlite` feature).
#[cfg(feature = "sqlite")]
pub type SqlitePubSub = SqlPubSub;

/// What the clones of a [`SqlPubSub`], its subscriptions and their ackers share.
pub(super) struct Inner {
    pub(super) pool: Pool,
    owns_pool: bool,
    pub(super) queries: Queries,
    pub(super) config: SqlConfig,
    schema: tokio::sync::OnceCell<()>,
    /// The server's packet limit (MySQL), once read.
    packet_limit: tokio::sync::OnceCell<Option<u64>>,
    /// Cancelled when the subscriber closes: ends every subscription's stream.
    pub(super) cancel: CancellationToken,
    pub(super) publisher_closed: AtomicBool,
    pub(super) subscriber_closed: AtomicBool,
    /// Live subscriptions (by owner), so that closing releases their leases before the pool goes.
    pub(super) subscriptions: Mutex<HashMap<Arc<str>, Weak<dyn Lease>>>,
    /// Releases spawned by dropped subscriptions.
    pub(super) tasks: TaskTracker,
    /// Topics whose row exists, each with the last sequence number this process saw stored in it
    /// (where to look for a publish whose outcome is unknown).
    known_topics: Mutex<HashMap<String, i64>>,
    /// Topics whose partition count this process checked against the database's record.
    checked_layouts: Mutex<std::collections::HashSet<String>>,
    /// The partition the next message without a key goes to (modulo the count; from a random
    /// start).
    next_partition: std::sync::atomic::AtomicU32,
}

/// A live subscription's hold on its group, as the subscriber's close sees it.
pub(super) trait Lease: Send + Sync {
    /// The release of the lease (or the deletion of a private group), unless it was already
    /// given back or a delivery is in flight (its settle releases then).
    fn release(self: Arc<Self>) -> Option<BoxFuture<'static, ()>>;
}

impl fmt::Debug for SqlPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlPubSub")
            .field("dialect", &self.dialect())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl SqlPubSub {
    fn with_pool(pool: Pool, owns_pool: bool, config: SqlConfig) -> Result<Self> {
        if config.table_prefix.is_empty()
            || !config.table_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!("table prefix {:?}: use letters, digits and `_`", config.table_prefix),
            ));
        }
        crate::pubsub::check_consumer_name(&config.consumer)?;
        if !(1..=MAX_PARTITIONS).contains(&config.partitions) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("SqlConfig::partitions is {}: use 1 to {MAX_PARTITIONS}", config.partitions),
            ));
        }
        let queries = Queries::new(pool.dialect(), &config.table_prefix);
        let pubsub = SqlPubSub {
            inner: Arc::new(Inner {
                pool,
                owns_pool,
                queries,
                config,
                schema: tokio::sync::OnceCell::new(),
                packet_limit: tokio::sync::OnceCell::new(),
                cancel: CancellationToken::new(),
                publisher_closed: AtomicBool::new(false),
                subscriber_closed: AtomicBool::new(false),
                subscriptions: Mutex::new(HashMap::new()),
                tasks: TaskTracker::new(),
                known_topics: Mutex::new(Default::default()),
                checked_layouts: Mutex::new(Default::default()),
                // A random start: short-lived publishers (one message each) would otherwise all
                // begin with partition 0.
                next_partition: std::sync::atomic::AtomicU32::new(random_start()),
            }),
        };
        if pubsub.inner.config.retention.is_some() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(sweep_every(Arc::downgrade(&pubsub.inner), pubsub.inner.cancel.clone()));
            }
        }
        Ok(pubsub)
    }

    /// Connects to `url`: `sqlite:path/to/file.db`, `postgres://...` or `mysql://...` /
    /// `mariadb://...` (each needs its feature). The tables are created on first use.
    pub async fn connect(url: &str, config: SqlConfig) -> Result<Self> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                use std::str::FromStr;
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(backend_error)?;
                Self::open_sqlite_with(options, config).await
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(config.max_connections)
                    .test_before_acquire(false)
                    .before_acquire(ping_if_idle)
                    .connect(url)
                    .await
                    .map_err(backend_error)?;
                Self::with_pool(Pool::Postgres(pool), true, config)
            }
            #[cfg(feature = "mysql")]
            "mysql" | "mariadb" => {
                let url = url.replacen("mariadb:", "mysql:", 1);
                let pool = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(config.max_connections)
                    .test_before_acquire(false)
                    .before_acquire(ping_if_idle)
                    .connect(&url)
                    .await
                    .map_err(backend_error)?;
                let pubsub = Self::with_pool(Pool::MySql(pool), true, config)?;
                // (So that `features().max_payload` is the server's from the start.)
                pubsub.ensure_limits().await?;
                Ok(pubsub)
            }
            other => Err(Error::new(
                ErrorKind::Config,
                format!("no SQL backend for `{other}:` URLs (enable the sqlite, postgres or mysql feature)"),
            )),
        }
    }

    /// Opens (creating if needed) the SQLite database at `path`, in WAL mode with
    /// `synchronous = NORMAL` (durable across process crashes; an OS crash may lose the last
    /// commits) and a 30 s busy timeout.
    #[cfg(feature = "sqlite")]
    pub async fn open_sqlite(path: impl AsRef<std::path::Path>, config: SqlConfig) -> Result<Self> {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
        Self::open_sqlite_with(options, config).await
    }

    #[cfg(feature = "sqlite")]
    async fn open_sqlite_with(
        options: sqlx::sqlite::SqliteConnectOptions,
        config: SqlConfig,
    ) -> Result<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .connect_with(options)
            .await
            .map_err(backend_error)?;
        Self::with_pool(Pool::Sqlite(pool), true, config)
    }

    /// Uses an existing SQLite pool (it is not closed by [`close`](crate::pubsub::Publisher::close)). For
    /// concurrent writers, open it in WAL mode with a busy timeout.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(pool: sqlx::SqlitePool, config: SqlConfig) -> Result<Self> {
        Self::with_pool(Pool::Sqlite(pool), false, config)
    }

    /// Uses an existing PostgreSQL pool (it is not closed by [`close`](crate::pubsub::Publisher::close)).
    #[cfg(feature = "postgres")]
    pub fn postgres(pool: sqlx::PgPool, config: SqlConfig) -> Result<Self> {
        Self::with_pool(Pool::Postgres(pool), false, config)
    }

    /// Uses an existing MySQL / MariaDB pool (it is not closed by [`close`](crate::pubsub::Publisher::close)).
    #[cfg(feature = "mysql")]
    pub fn mysql(pool: sqlx::MySqlPool, config: SqlConfig) -> Result<Self> {
        Self::with_pool(Pool::MySql(pool), false, config)
    }

    /// The database.
    pub fn dialect(&self) -> Dialect {
        self.inner.pool.dialect()
    }

    /// The settings.
    pub fn config(&self) -> &SqlConfig {
        &self.inner.config
    }

    /// The SQLite pool it uses (for the outbox: begin a transaction on it, write your rows and
    /// [`publish_in`](SqlPubSub::publish_in) it); `None` on another database.
    #[cfg(feature = "sqlite")]
    pub fn sqlite_pool(&self) -> Option<&sqlx::SqlitePool> {
        match &self.inner.pool {
            Pool::Sqlite(pool) => Some(pool),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The PostgreSQL pool it uses (see [`sqlite_pool`](SqlPubSub::sqlite_pool)); `None` on
    /// another database.
    #[cfg(feature = "postgres")]
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.inner.pool {
            Pool::Postgres(pool) => Some(pool),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The MySQL / MariaDB pool it uses (see [`sqlite_pool`](SqlPubSub::sqlite_pool)); `None`
    /// on another database.
    #[cfg(feature = "mysql")]
    pub fn mysql_pool(&self) -> Option<&sqlx::MySqlPool> {
        match &self.inner.pool {
            Pool::MySql(pool) => Some(pool),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Creates the tables now rather than on first use.
    pub async fn ensure_schema(&self) -> Result<()> {
        let inner = &self.inner;
        inner
            .schema
            .get_or_try_init(|| async {
                dispatch!(&inner.pool, (pool, ops) => ops::create_schema(pool, &inner.queries).await)
            })
            .await?;
        self.ensure_limits().await
    }

    /// Reads the server's limits (MySQL's `max_allowed_packet`) unless already known.
    async fn ensure_limits(&self) -> Result<()> {
        let inner = &self.inner;
        inner
            .packet_limit
            .get_or_try_init(|| async {
                dispatch!(&inner.pool, (pool, ops) => ops::packet_limit(pool, &inner.queries).await)
            })
            .await?;
        Ok(())
    }

    /// Runs one retention sweep now (the background one runs every minute): deletes, in every
    /// topic, the messages every group has acked and published longer than
    /// [`SqlConfig::retention`] ago. Returns how many it deleted; 0 when retention is off.
    pub async fn sweep(&self) -> Result<u64> {
        let Some(retention) = self.inner.config.retention else { return Ok(0) };
        self.ensure_schema().await?;
        let inner = &self.inner;
        let before = now_ms().saturating_sub(millis(retention));
        let topics = dispatch!(&inner.pool, (pool, ops) => ops::all_topics(pool, &inner.queries).await)?;
        let mut deleted = 0;
        for topic in topics {
            deleted += dispatch!(&inner.pool, (pool, ops) => ops::trim(
                pool, &inner.queries, &topic, before, RETENTION_BATCH,
            ).await)?;
        }
        Ok(deleted)
    }

    /// Deletes `topics` for good: their messages, consumer groups and sequence numbers (of every
    /// partition, and the record of their partition count). Subscriptions to them should be
    /// closed first.
    pub async fn delete_topics(&self, topics: &[String]) -> Result<()> {
        self.ensure_schema().await?;
        let inner = &self.inner;
        for topic in topics {
            let parts = self.read_layout(topic).await?.0.unwrap_or(1);
            let mut names = vec![topic.clone()];
            if parts > 1 {
                names.extend((0..u32::try_from(parts).unwrap_or(0)).map(|p| partition_topic(topic, p)));
            }
            for name in &names {
                reconnecting(|| async {
                    dispatch!(&inner.pool, (pool, ops) => ops::delete_topic(pool, &inner.queries, name).await)
                })
                .await?;
                inner.known_topics.lock().remove(name);
            }
            inner.checked_layouts.lock().remove(topic);
        }
        Ok(())
    }

    /// Checks, once per topic and process, that the database records `topic` with this
    /// pub/sub's partition count ([`SqlConfig::partitions`]), recording it on a partitioned
    /// topic's first use.
    pub(super) async fn check_layout(&self, topic: &str) -> Result<()> {
        if self.layout_checked(topic) {
            return Ok(());
        }
        let inner = &self.inner;
        let wanted = inner.config.partitions;
        let (mut parts, own) = self.read_layout(topic).await?;
        if parts.is_none() && wanted > 1 {
            refuse_unpartitioned(topic, own, wanted)?;
            reconnecting(|| async {
                dispatch!(&inner.pool, (pool, ops) => {
                    ops::record_partitions(pool, &inner.queries, topic, i64::from(wanted)).await
                })
            })
            .await?;
            parts = self.read_layout(topic).await?.0;
        }
        self.compare_layout(topic, parts)
    }

    /// Whether `topic`'s partition count was checked already.
    pub(super) fn layout_checked(&self, topic: &str) -> bool {
        self.inner.checked_layouts.lock().contains(topic)
    }

    /// `topic`'s recorded partition count, and its own last sequence number.
    pub(super) async fn read_layout(&self, topic: &str) -> Result<(Option<i64>, Option<i64>)> {
        let inner = &self.inner;
        reconnecting(|| async {
            dispatch!(&inner.pool, (pool, ops) => ops::layout(pool, &inner.queries, topic).await)
        })
        .await
    }

    /// Refuses a recorded partition count other than this pub/sub's; remembers a match.
    pub(super) fn compare_layout(&self, topic: &str, recorded: Option<i64>) -> Result<()> {
        let wanted = self.inner.config.partitions;
        let recorded = recorded.unwrap_or(1);
        if recorded != i64::from(wanted) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "topic `{topic}` has {recorded} partition(s) in the database, and this SQL \
                     pub/sub is set to {wanted} (SqlConfig::partitions): use the same count in \
                     every process"
                ),
            ));
        }
        let mut checked = self.inner.checked_layouts.lock();
        if checked.len() > 10_000 {
            checked.clear();
        }
        checked.insert(topic.to_owned());
        Ok(())
    }

    /// The names `topic`'s messages are stored under: `topic` itself, or one per partition.
    pub(super) fn stored_topics(&self, topic: &str) -> Vec<String> {
        match self.inner.config.partitions {
            1 => vec![topic.to_owned()],
            parts => (0..parts).map(|p| partition_topic(topic, p)).collect(),
        }
    }

    /// `messages` divided by partition (ascending, each in publishing order): by a stable hash
    /// of the key; the messages without a key all go to the next partition in turn. One part,
    /// `topic` itself, when the topic is not partitioned.
    pub(super) fn split<'t, T>(
        &self,
        topic: &'t str,
        messages: Vec<T>,
        key: impl Fn(&T) -> Option<&str>,
    ) -> Vec<(std::borrow::Cow<'t, str>, Vec<T>)> {
        let parts = self.inner.config.partitions;
        if parts == 1 {
            return vec![(topic.into(), messages)];
        }
        let mut unkeyed = None;
        let mut by_partition: std::collections::BTreeMap<u32, Vec<T>> = std::collections::BTreeMap::new();
        for message in messages {
            let partition = match key(&message) {
                Some(key) => key_partition(key, parts),
                None => *unkeyed
                    .get_or_insert_with(|| self.inner.next_partition.fetch_add(1, Ordering::Relaxed) % parts),
            };
            by_partition.entry(partition).or_default().push(message);
        }
        by_partition.into_iter().map(|(p, messages)| (partition_topic(topic, p).into(), messages)).collect()
    }

    /// Creates the topic's row in a statement of its own (autocommit), before any publishing
    /// transaction: inserting it inside one would make two first publishers to new topics take
    /// gap locks on MySQL and deadlock.
    pub(super) async fn ensure_topic(&self, topic: &str) -> Result<()> {
        let inner = &self.inner;
        if inner.known_topics.lock().contains_key(topic) {
            return Ok(());
        }
        reconnecting(|| async {
            dispatch!(&inner.pool, (pool, ops) => ops::create_topic(pool, &inner.queries, topic).await)
        })
        .await?;
        let mut known = inner.known_topics.lock();
        if known.len() > 10_000 {
            known.clear();
        }
        known.entry(topic.to_owned()).or_insert(0);
        Ok(())
    }

    /// The last sequence number this process saw stored in `topic` (0 if none).
    pub(super) fn last_seen(&self, topic: &str) -> i64 {
        self.inner.known_topics.lock().get(topic).copied().unwrap_or(0)
    }

    /// Notes that `topic` holds a message at `seq`.
    pub(super) fn saw_stored(&self, topic: &str, seq: i64) {
        if let Some(last) = self.inner.known_topics.lock().get_mut(topic) {
            *last = (*last).max(seq);
        }
    }
}

impl Inner {
    /// The largest payload a publish accepts ([`Features::max_payload`](crate::pubsub::Features)).
    pub(super) fn max_payload(&self) -> usize {
        self.pool.dialect().max_payload(self.packet_limit.get().copied().flatten())
    }

    /// Refuses the publish of `messages` if one is larger than [`max_payload`](Self::max_payload).
    pub(super) fn check_sizes<'a>(&self, messages: impl IntoIterator<Item = &'a Message>) -> Result<()> {
        let limit = self.max_payload();
        let source = self.pool.dialect().limit_source();
        messages
            .into_iter()
            .try_for_each(|message| check_size("payload", message.payload().len(), limit, source))
    }

    /// How many bytes one INSERT may carry: [`SqlConfig::batch_bytes`], and never more than the
    /// server's limit on a statement.
    pub(super) fn insert_bytes(&self) -> usize {
        self.config.batch_bytes.min(self.max_payload())
    }

    /// Wakes the idle subscriptions of this process to `topic` (of this table prefix).
    pub(super) fn wake(&self, topic: &str) {
        self.signal(topic).notify_waiters();
    }

    /// What wakes the idle subscriptions of this process to `topic` (of this table prefix).
    pub(super) fn signal(&self, topic: &str) -> Arc<Notify> {
        topic_signal(&format!("{}\u{0}{topic}", self.config.table_prefix))
    }

    /// Closes an owned pool once both sides are closed.
    pub(super) async fn close_pool_if_done(&self) -> Result<()> {
        if self.owns_pool
            && self.publisher_closed.load(Ordering::Acquire)
            && self.subscriber_closed.load(Ordering::Acquire)
        {
            // A connection still checked out (a settle racing the close) must not hold this up.
            let _ = tokio::time::timeout(Duration::from_secs(5), self.pool.close()).await;
        }
        Ok(())
    }
}

/// Wake-ups for subscriptions of this process, by table prefix and topic: a publish through any
/// `SqlPubSub` wakes the idle subscriptions of every other one at once (they poll otherwise).
fn topic_signal(key: &str) -> Arc<Notify> {
    static SIGNALS: OnceLock<Mutex<HashMap<String, Weak<Notify>>>> = OnceLock::new();
    let mut signals = SIGNALS.get_or_init(Default::default).lock();
    if let Some(signal) = signals.get(key).and_then(Weak::upgrade) {
        return signal;
    }
    if signals.len() > 1024 {
        signals.retain(|_, signal| signal.strong_count() > 0);
    }
    let signal = Arc::new(Notify::new());
    signals.insert(key.to_owned(), Arc::downgrade(&signal));
    signal
}

/// The most partitions a topic may have.
const MAX_PARTITIONS: u32 = 1024;

/// The name partition `partition` of `topic` is stored under: `{topic}#{partition}` (so a
/// topic of that name must not be used beside a partitioned `topic`).
pub(super) fn partition_topic(topic: &str, partition: u32) -> String {
    format!("{topic}#{partition}")
}

/// The partition of a message with `key`: FNV-1a (64 bits) of the key's bytes, modulo `parts`;
/// the same in every process and version.
pub(super) fn key_partition(key: &str, parts: u32) -> u32 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    u32::try_from(hash % u64::from(parts)).expect("below a u32")
}

/// A random number (the standard library's randomly keyed hasher, keyed per call).
fn random_start() -> u32 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id()) as u32
}

/// Refuses to partition a topic that holds messages of its own (it was used unpartitioned).
pub(super) fn refuse_unpartitioned(topic: &str, own_last_seq: Option<i64>, wanted: u32) -> Result<()> {
    if own_last_seq.is_some_and(|seq| seq > 0) {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "topic `{topic}` holds messages published without partitions: it cannot be used \
                 with {wanted} partitions (SqlConfig::partitions)"
            ),
        ));
    }
    Ok(())
}

/// Sequence numbers one retention statement deletes at most.
const RETENTION_BATCH: i64 = 1000;
/// How often the background retention sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The background retention sweep of one pub/sub, until it closes (or is dropped).
async fn sweep_every(inner: std::sync::Weak<Inner>, closed: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(SWEEP_EVERY) => {}
            () = closed.cancelled() => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.publisher_closed.load(Ordering::Acquire) && inner.subscriber_closed.load(Ordering::Acquire) {
            return;
        }
        match (SqlPubSub { inner }).sweep().await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "SQL backend: retention sweep"),
            Err(error) => tracing::warn!(%error, "SQL backend: retention sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{key_partition, partition_topic};

    #[test]
    fn a_key_has_the_same_partition_everywhere() {
        // FNV-1a 64 of the key's bytes: fixed values, so a change of the hash (which would move
        // keys to other partitions of existing topics) fails here.
        assert_eq!(key_partition("", 1000), (0xcbf2_9ce4_8422_2325_u64 % 1000) as u32);
        assert_eq!(key_partition("a", u32::MAX), (0xaf63_dc4c_8601_ec8c_u64 % u64::from(u32::MAX)) as u32);
        assert!((0..100).all(|n| key_partition(&format!("order-{n}"), 4) < 4));
        assert_eq!(partition_topic("orders", 3), "orders#3");
    }
}
