//! [`SqlPubSub`]: one durable backend over sqlx for SQLite (`sqlite` feature, embedded),
//! PostgreSQL (`postgres`) and MySQL / MariaDB (`mysql`).
//!
//! # Model
//! Three tables (names prefixed by [`SqlConfig::table_prefix`], default `millstream_`), created on
//! first use:
//! - `topics(topic, last_seq)`: one row per topic, holding its last sequence number. A publish
//!   reserves its numbers by updating this row, which stays locked until the publishing
//!   transaction commits; so numbers are dense per topic and *become visible in order*, and a
//!   reader that has seen `n` will never later find a smaller number appear (the classic lost-row
//!   race of "read everything above my offset" over auto-increment ids cannot happen).
//! - `messages(topic, seq, id, metadata, payload, created_ms)`: the log. Rows are never updated.
//! - `groups(topic, grp, acked, head_attempts, owner, lease_until, not_before)`: one row per
//!   consumer group: everything up to `acked` is done; `owner` holds a lease on the group until
//!   `lease_until` (the ack deadline).
//!
//! # Delivery
//! A group is consumed **in strict order**: the lease holder reads a batch
//! ([`SqlConfig::batch_size`]) after `acked` and delivers it one message at a time; the next one is
//! handed out only once the previous is settled. An ack moves `acked` forward (guarded on the
//! previous value and the lease, so an acked message is never delivered to the group again) and
//! renews the lease. A nack releases the lease and keeps the group from being claimed before the
//! nack's delay, so the nacked message is the next one delivered, to whichever subscription of
//! the group claims first. A consumer that dies (or hangs past [`SqlConfig::ack_deadline`]) loses its
//! lease and another subscription takes over from `acked`: at-least-once, in order.
//! [`Delivery::attempt`] counts the head message's deliveries in the group row; after an expired
//! lease it may count one delivery that did not happen (never one less).
//! Several subscriptions of one group share it: one holds the lease at a time, the others stand by
//! (order is kept across all of them; a group is not a way to parallelise, many groups or topics are).
//!
//! A named group that does not exist yet starts at the beginning of the topic (late groups get the
//! history); a subscription without a group gets a private group starting after the topic's last
//! message, deleted when the subscription ends.
//!
//! Subscriptions poll ([`SqlConfig::poll_interval`]) while there is nothing to read; a publish
//! through any `SqlPubSub` of the same process wakes them at once.
//!
//! # The outbox
//! [`SqlPubSub::publish_in`] publishes on the caller's own connection, inside the caller's
//! transaction: the messages become visible exactly when (and only if) the caller's transaction
//! commits. Until then the topic's row stays locked, so other publishers to the same topic wait.
//!
//! # Clocks
//! Leases and nack delays use the publishing / consuming process's wall clock (milliseconds since
//! the Unix epoch): processes sharing one database should have synchronised clocks.
//!
//! Messages are kept (there is no retention yet): delete old rows of `messages` below every
//! group's `acked` yourself if the table grows too large.

mod ops;

pub use self::dedup::SqlDedupStore;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    closed_error, AckSink, Acker, Delivery, Features, OpFuture, Publisher, SubscribeOptions, Subscriber,
    Subscription,
};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Message, MessageId, Metadata};

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
compile_error!("the `sql` feature is internal: enable `sqlite`, `postgres` or `mysql`");

/// Settings of a [`SqlPubSub`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqlConfig {
    /// Prefix of the three tables. Default `millstream_`. Letters, digits and `_` only.
    pub table_prefix: String,
    /// How often an idle subscription looks for new messages. Default 100 ms.
    pub poll_interval: Duration,
    /// How many messages a subscription reads at once. Default 100.
    pub batch_size: usize,
    /// How long a subscription may hold a message unsettled before its group's lease expires and
    /// another subscription gets the message. Default 30 s.
    pub ack_deadline: Duration,
    /// Connections of pools this crate opens (not of pools you pass in). Default 5.
    pub max_connections: u32,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            table_prefix: "millstream_".to_owned(),
            poll_interval: Duration::from_millis(100),
            batch_size: 100,
            ack_deadline: Duration::from_secs(30),
            max_connections: 5,
        }
    }
}

impl SqlConfig {
    /// Sets [`SqlConfig::table_prefix`].
    pub fn table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.table_prefix = prefix.into();
        self
    }

    /// Sets [`SqlConfig::poll_interval`].
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets [`SqlConfig::batch_size`].
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// Sets [`SqlConfig::ack_deadline`].
    pub fn ack_deadline(mut self, deadline: Duration) -> Self {
        self.ack_deadline = deadline;
        self
    }

    /// Sets [`SqlConfig::max_connections`].
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }
}

/// The database behind a [`SqlPubSub`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    /// SQLite (3.35 or newer; bundled).
    Sqlite,
    /// PostgreSQL (11 or newer).
    Postgres,
    /// MySQL (8) or MariaDB (10.5 or newer).
    MySql,
}

#[derive(Clone)]
enum Pool {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool and `$ops` to its dialect's statements.
macro_rules! dispatch {
    ($self:expr, ($pool:ident, $ops:ident) => $body:expr) => {
        match $self {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite($pool) => {
                #[allow(unused_imports)]
                use ops::sqlite as $ops;
                $body
            }
            #[cfg(feature = "postgres")]
            Pool::Postgres($pool) => {
                #[allow(unused_imports)]
                use ops::postgres as $ops;
                $body
            }
            #[cfg(feature = "mysql")]
            Pool::MySql($pool) => {
                #[allow(unused_imports)]
                use ops::mysql as $ops;
                $body
            }
        }
    };
}

// After `dispatch!`, which it uses.
mod dedup;

impl Pool {
    fn dialect(&self) -> Dialect {
        match self {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(_) => Dialect::Sqlite,
            #[cfg(feature = "postgres")]
            Pool::Postgres(_) => Dialect::Postgres,
            #[cfg(feature = "mysql")]
            Pool::MySql(_) => Dialect::MySql,
        }
    }

    async fn close(&self) {
        dispatch!(self, (pool, _ops) => pool.close().await)
    }
}

/// The SQL text for one dialect and table prefix.
struct Queries {
    mysql: bool,
    schema_lock: Option<String>,
    schema: Vec<String>,
    reserve: String,
    last_seq: String,
    create_topic: String,
    insert_prefix: String,
    create_group: String,
    claim: String,
    group_state: String,
    read: String,
    ack: String,
    nack: String,
    release: String,
    delete_group: String,
    delete_topic: [String; 3],
}

/// `?` placeholders become `$1`, `$2`, ... for PostgreSQL (no statement here has a literal `?`).
fn number_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

impl Queries {
    fn new(dialect: Dialect, p: &str) -> Queries {
        // MySQL: names compare byte for byte (`utf8mb4_bin`: `Orders` and `orders` are two topics);
        // the columns read back as text keep a text collation (sqlx reads `_bin` ones as bytes).
        let (text, key, id, blob, big) = match dialect {
            Dialect::Sqlite => ("TEXT", "TEXT", "TEXT", "BLOB", "INTEGER"),
            Dialect::Postgres => ("TEXT", "TEXT", "TEXT", "BYTEA", "BIGINT"),
            Dialect::MySql => (
                "LONGTEXT",
                "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
                "VARCHAR(64)",
                "LONGBLOB",
                "BIGINT",
            ),
        };
        let table_options = if dialect == Dialect::MySql {
            " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"
        } else {
            ""
        };
        let schema = vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {p}topics (topic {key} NOT NULL PRIMARY KEY, \
                 last_seq {big} NOT NULL){table_options}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {p}messages (topic {key} NOT NULL, seq {big} NOT NULL, \
                 id {id} NOT NULL, metadata {text} NOT NULL, payload {blob} NOT NULL, \
                 created_ms {big} NOT NULL, PRIMARY KEY (topic, seq)){table_options}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {p}groups (topic {key} NOT NULL, grp {key} NOT NULL, \
                 acked {big} NOT NULL, head_attempts {big} NOT NULL, owner {key} NULL, \
                 lease_until {big} NOT NULL, not_before {big} NOT NULL, \
                 PRIMARY KEY (topic, grp)){table_options}"
            ),
        ];
        let mysql = dialect == Dialect::MySql;
        let returning =
            |sql: String, columns: &str| if mysql { sql } else { format!("{sql} RETURNING {columns}") };
        let (ignore, on_conflict) = if mysql { (" IGNORE", "") } else { ("", " ON CONFLICT DO NOTHING") };
        let sql = |sql: String| if dialect == Dialect::Postgres { number_placeholders(&sql) } else { sql };
        Queries {
            mysql,
            schema_lock: (dialect == Dialect::Postgres)
                .then(|| "SELECT pg_advisory_xact_lock(7305418842461217)".to_owned()),
            schema,
            reserve: sql(returning(
                format!("UPDATE {p}topics SET last_seq = last_seq + ? WHERE topic = ?"),
                "last_seq",
            )),
            last_seq: format!("SELECT last_seq FROM {p}topics WHERE topic = ? FOR UPDATE"),
            create_topic: sql(format!("INSERT{ignore} INTO {p}topics (topic, last_seq) VALUES (?, 0){on_conflict}")),
            insert_prefix: format!("INSERT INTO {p}messages (topic, seq, id, metadata, payload, created_ms) "),
            create_group: sql(format!(
                "INSERT{ignore} INTO {p}groups (topic, grp, acked, head_attempts, owner, lease_until, not_before) \
                 SELECT ?, ?, CASE WHEN ? THEN COALESCE((SELECT last_seq FROM {p}topics WHERE topic = ?), 0) \
                 ELSE 0 END, 0, NULL, 0, 0 WHERE 1 = 1{on_conflict}"
            )),
            claim: sql(returning(
                format!(
                    "UPDATE {p}groups SET owner = ?, lease_until = ?, head_attempts = head_attempts + 1 \
                     WHERE topic = ? AND grp = ? AND (owner IS NULL OR owner = ? OR lease_until < ?) \
                     AND not_before <= ? AND acked < (SELECT last_seq FROM {p}topics WHERE topic = ?)"
                ),
                "acked, head_attempts",
            )),
            group_state: sql(format!("SELECT acked, head_attempts FROM {p}groups WHERE topic = ? AND grp = ?")),
            read: sql(format!(
                "SELECT seq, id, metadata, payload FROM {p}messages WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?"
            )),
            ack: sql(format!(
                "UPDATE {p}groups SET acked = ?, head_attempts = ?, lease_until = ?, owner = ? \
                 WHERE topic = ? AND grp = ? AND owner = ? AND acked = ?"
            )),
            nack: sql(format!(
                "UPDATE {p}groups SET owner = NULL, not_before = ? \
                 WHERE topic = ? AND grp = ? AND owner = ? AND acked = ?"
            )),
            release: sql(format!(
                "UPDATE {p}groups SET owner = NULL, head_attempts = ? WHERE topic = ? AND grp = ? AND owner = ?"
            )),
            delete_group: sql(format!("DELETE FROM {p}groups WHERE topic = ? AND grp = ?")),
            delete_topic: [
                sql(format!("DELETE FROM {p}groups WHERE topic = ?")),
                sql(format!("DELETE FROM {p}messages WHERE topic = ?")),
                sql(format!("DELETE FROM {p}topics WHERE topic = ?")),
            ],
        }
    }
}

/// A message as stored: id and metadata as text, the payload as is.
struct StoredMessage {
    id: String,
    metadata: String,
    payload: Bytes,
}

impl StoredMessage {
    fn new(message: Message) -> Self {
        let (id, metadata, payload) = message.into_parts();
        let pairs: Vec<(&str, &str)> = metadata.iter().collect();
        let metadata = serde_json::to_string(&pairs).expect("string pairs serialize");
        StoredMessage { id: id.to_string(), metadata, payload }
    }
}

/// Rebuilds a message from its row. Nothing is dropped: an id or metadata that does not parse (a
/// row written by something else) still delivers the message, with a fresh id or with the raw
/// metadata under `millstream.raw_metadata`.
fn decode_row(id: &str, metadata: &str, payload: Vec<u8>) -> Message {
    let id = MessageId::parse(id).unwrap_or_else(|_| {
        tracing::warn!(id, "SQL backend: a stored message id is not a UUID; delivering with a new id");
        MessageId::new()
    });
    let metadata = match serde_json::from_str::<Vec<(String, String)>>(metadata) {
        Ok(pairs) => pairs.into_iter().collect(),
        Err(_) => Metadata::builder().with("millstream.raw_metadata", metadata).build(),
    };
    Message::from_parts(id, metadata, Bytes::from(payload))
}

fn backend_error(error: sqlx::Error) -> Error {
    Error::backend(error)
}

/// Deadlocks and serialization failures (SQLSTATE class 40): the transaction may be retried.
fn is_retryable(error: &Error) -> bool {
    match error.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(db)) => db.code().is_some_and(|code| code.starts_with("40")),
        _ => false,
    }
}

/// How many times one operation is tried when the database reports a deadlock or a
/// serialization failure.
const RETRY_ATTEMPTS: u32 = 8;

/// Runs `op` again (a few times) while it fails with a deadlock or serialization failure.
async fn retrying<T, F, Fut>(mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Err(error) if attempt < RETRY_ATTEMPTS && is_retryable(&error) => backoff(attempt).await,
            result => return result,
        }
    }
}

/// The wait before another try: a few milliseconds, growing, jittered.
async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(2 * u64::from(attempt) + fastrand::u64(0..5))).await;
}

fn now_ms() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
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

fn wake(prefix: &str, topic: &str) {
    topic_signal(&format!("{prefix}\u{0}{topic}")).notify_waiters();
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
    inner: Arc<Inner>,
}

/// SQLite through [`SqlPubSub`]: embedded and durable (`sqlite` feature).
#[cfg(feature = "sqlite")]
pub type SqlitePubSub = SqlPubSub;

struct Inner {
    pool: Pool,
    owns_pool: bool,
    queries: Queries,
    config: SqlConfig,
    schema: tokio::sync::OnceCell<()>,
    cancel: CancellationToken,
    publisher_closed: AtomicBool,
    subscriber_closed: AtomicBool,
    /// Live subscriptions, so that closing releases their leases before the pool goes.
    subscriptions: Mutex<HashMap<Arc<str>, Weak<SubShared>>>,
    /// Releases spawned by dropped subscriptions.
    tasks: tokio_util::task::TaskTracker,
    /// Topics whose row exists.
    known_topics: Mutex<std::collections::HashSet<String>>,
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
        let queries = Queries::new(pool.dialect(), &config.table_prefix);
        Ok(SqlPubSub {
            inner: Arc::new(Inner {
                pool,
                owns_pool,
                queries,
                config,
                schema: tokio::sync::OnceCell::new(),
                cancel: CancellationToken::new(),
                publisher_closed: AtomicBool::new(false),
                subscriber_closed: AtomicBool::new(false),
                subscriptions: Mutex::new(HashMap::new()),
                tasks: tokio_util::task::TaskTracker::new(),
                known_topics: Mutex::new(Default::default()),
            }),
        })
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
                    .connect(&url)
                    .await
                    .map_err(backend_error)?;
                Self::with_pool(Pool::MySql(pool), true, config)
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

    /// Uses an existing SQLite pool (it is not closed by [`close`](Publisher::close)). For
    /// concurrent writers, open it in WAL mode with a busy timeout.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(pool: sqlx::SqlitePool, config: SqlConfig) -> Result<Self> {
        Self::with_pool(Pool::Sqlite(pool), false, config)
    }

    /// Uses an existing PostgreSQL pool (it is not closed by [`close`](Publisher::close)).
    #[cfg(feature = "postgres")]
    pub fn postgres(pool: sqlx::PgPool, config: SqlConfig) -> Result<Self> {
        Self::with_pool(Pool::Postgres(pool), false, config)
    }

    /// Uses an existing MySQL / MariaDB pool (it is not closed by [`close`](Publisher::close)).
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

    /// Creates the tables now rather than on first use.
    pub async fn ensure_schema(&self) -> Result<()> {
        let inner = &self.inner;
        inner
            .schema
            .get_or_try_init(|| async {
                dispatch!(&inner.pool, (pool, ops) => ops::create_schema(pool, &inner.queries).await)
            })
            .await
            .map(|_| ())
    }

    /// The outbox: publishes `messages` to `topic` on `conn`, the caller's connection, inside the
    /// caller's transaction when there is one (a savepoint in it; otherwise a transaction of its
    /// own). The messages are delivered only once that transaction commits, and never if it rolls
    /// back. `conn` must be of this pub/sub's database.
    ///
    #[cfg_attr(feature = "postgres", doc = "```no_run")]
    #[cfg_attr(not(feature = "postgres"), doc = "```ignore")]
    /// # use millstream::pubsub::sql::{SqlPubSub, SqlConfig};
    /// # use millstream::Message;
    /// # async fn f(pool: sqlx::PgPool, pubsub: SqlPubSub) -> millstream::Result<()> {
    /// let mut tx = pool.begin().await.map_err(millstream::Error::backend)?;
    /// sqlx::query("UPDATE stock SET qty = qty - 1 WHERE sku = 'x'").execute(&mut *tx).await.map_err(millstream::Error::backend)?;
    /// pubsub.publish_in(&mut *tx, "stock.changed", vec![Message::new(r#"{"sku":"x"}"#)]).await?;
    /// tx.commit().await.map_err(millstream::Error::backend)?; // the message exists from here on
    /// # Ok(()) }
    /// ```
    pub async fn publish_in<C: OutboxConnection + ?Sized>(
        &self,
        conn: &mut C,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<()> {
        if C::DIALECT != self.dialect() {
            return Err(Error::new(
                ErrorKind::Config,
                format!("publish_in: a {:?} connection for a {:?} pub/sub", C::DIALECT, self.dialect()),
            ));
        }
        self.ensure_schema().await?;
        if C::DIALECT != Dialect::Sqlite {
            // (SQLite: the caller's transaction may hold the database's write lock already; the
            // topic row is then created inside it, where SQLite has no gap locks to fear.)
            self.ensure_topic(topic).await?;
        }
        let stored: Vec<_> = messages.into_iter().map(StoredMessage::new).collect();
        sealed::Sealed::publish(conn, &self.inner.queries, topic, &stored).await
        // Not woken here: the messages are not visible before the caller commits; subscriptions
        // find them at their next poll.
    }

    /// Deletes `topics` for good: their messages, consumer groups and sequence numbers.
    /// Subscriptions to them should be closed first.
    pub async fn delete_topics(&self, topics: &[String]) -> Result<()> {
        self.ensure_schema().await?;
        let inner = &self.inner;
        for topic in topics {
            dispatch!(&inner.pool, (pool, ops) => ops::delete_topic(pool, &inner.queries, topic).await)?;
            inner.known_topics.lock().remove(topic);
        }
        Ok(())
    }

    /// Creates the topic's row in a statement of its own (autocommit), before any publishing
    /// transaction: inserting it inside one would make two first publishers to new topics take
    /// gap locks on MySQL and deadlock.
    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        let inner = &self.inner;
        if inner.known_topics.lock().contains(topic) {
            return Ok(());
        }
        dispatch!(&inner.pool, (pool, ops) => ops::create_topic(pool, &inner.queries, topic).await)?;
        let mut known = inner.known_topics.lock();
        if known.len() > 10_000 {
            known.clear();
        }
        known.insert(topic.to_owned());
        Ok(())
    }

    fn signal_key(&self, topic: &str) -> String {
        format!("{}\u{0}{topic}", self.inner.config.table_prefix)
    }
}

mod sealed {
    use super::{Queries, Result, StoredMessage};

    /// The publishing half of [`OutboxConnection`](super::OutboxConnection), kept private (no
    /// one outside can name it, so its private argument types never leak).
    #[allow(private_interfaces)]
    pub trait Sealed {
        fn publish<'a>(
            &'a mut self,
            queries: &'a Queries,
            topic: &'a str,
            messages: &'a [StoredMessage],
        ) -> futures_core::future::BoxFuture<'a, Result<()>>;
    }
}

/// A connection [`SqlPubSub::publish_in`] can publish on: `sqlx::PgConnection`,
/// `sqlx::MySqlConnection` or `sqlx::SqliteConnection` (a `Transaction` derefs to one:
/// `&mut *tx`). Sealed.
pub trait OutboxConnection: sealed::Sealed + Send {
    /// The database of this connection type.
    const DIALECT: Dialect;
}

macro_rules! outbox_connection {
    ($feature:literal, $conn:ty, $dialect:expr, $ops:ident) => {
        #[cfg(feature = $feature)]
        #[allow(private_interfaces)]
        impl sealed::Sealed for $conn {
            fn publish<'a>(
                &'a mut self,
                queries: &'a Queries,
                topic: &'a str,
                messages: &'a [StoredMessage],
            ) -> futures_core::future::BoxFuture<'a, Result<()>> {
                Box::pin(ops::$ops::publish(self, queries, topic, messages))
            }
        }
        #[cfg(feature = $feature)]
        impl OutboxConnection for $conn {
            const DIALECT: Dialect = $dialect;
        }
    };
}

outbox_connection!("sqlite", sqlx::SqliteConnection, Dialect::Sqlite, sqlite);
outbox_connection!("postgres", sqlx::PgConnection, Dialect::Postgres, postgres);
outbox_connection!("mysql", sqlx::MySqlConnection, Dialect::MySql, mysql);

impl Publisher for SqlPubSub {
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> OpFuture<'a> {
        self.publish_batch(topic, vec![message])
    }

    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> OpFuture<'a> {
        if self.inner.publisher_closed.load(Ordering::Acquire) {
            return OpFuture::ready(Err(closed_error("SQL publisher is closed")));
        }
        OpFuture::boxed(async move {
            self.ensure_schema().await?;
            let stored: Vec<_> = messages.into_iter().map(StoredMessage::new).collect();
            self.ensure_topic(topic).await?;
            let inner = &self.inner;
            // A deadlock or serialization failure: the database asks for another try.
            retrying(|| async {
                dispatch!(&inner.pool, (pool, ops) => {
                    match pool.acquire().await {
                        Ok(mut conn) => ops::publish(&mut conn, &inner.queries, topic, &stored).await,
                        Err(error) => Err(backend_error(error)),
                    }
                })
            })
            .await?;
            wake(&inner.config.table_prefix, topic);
            Ok(())
        })
    }

    fn close(&self) -> OpFuture<'_> {
        self.inner.publisher_closed.store(true, Ordering::Release);
        OpFuture::boxed(self.inner.close_pool_if_done())
    }
}

impl Inner {
    /// Closes an owned pool once both sides are closed.
    async fn close_pool_if_done(&self) -> Result<()> {
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

impl Subscriber for SqlPubSub {
    fn subscribe<'a>(&'a self, topic: &'a str, options: SubscribeOptions) -> OpFuture<'a, Subscription> {
        if self.inner.subscriber_closed.load(Ordering::Acquire) {
            return OpFuture::ready(Err(closed_error("SQL subscriber is closed")));
        }
        OpFuture::boxed(async move {
            self.ensure_schema().await?;
            let owner: Arc<str> = uuid::Uuid::now_v7().simple().to_string().into();
            let (group, private) = match options.group {
                Some(group) => (group, false),
                None => (format!("~private.{owner}"), true),
            };
            let inner = &self.inner;
            dispatch!(&inner.pool, (pool, ops) => ops::create_group(pool, &inner.queries, topic, &group, private).await)?;
            let sub = Arc::new(SubShared {
                inner: inner.clone(),
                topic: topic.into(),
                group: group.into(),
                owner,
                private,
                state: Mutex::new(SettleState::default()),
                settled: Notify::new(),
            });
            inner.subscriptions.lock().insert(sub.owner.clone(), Arc::downgrade(&sub));
            let stream = SqlStream {
                signal: topic_signal(&self.signal_key(topic)),
                cancel: inner.cancel.child_token(),
                sub,
                buffer: VecDeque::new(),
                acked: 0,
                head_attempts: 0,
                lease_until: 0,
                first_of_claim: false,
            };
            Ok(Subscription::new(futures_util::stream::unfold(stream, |mut stream| async move {
                let item = stream.next().await?;
                Some((item, stream))
            })))
        })
    }

    fn close(&self) -> OpFuture<'_> {
        self.inner.subscriber_closed.store(true, Ordering::Release);
        self.inner.cancel.cancel();
        OpFuture::boxed(async move {
            // Give every group back now (a delivery still in flight releases it when settled).
            let subs: Vec<_> =
                self.inner.subscriptions.lock().drain().filter_map(|(_, s)| s.upgrade()).collect();
            futures_util::future::join_all(subs.into_iter().filter_map(SubShared::take_release)).await;
            self.inner.tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.tasks.wait()).await;
            self.inner.close_pool_if_done().await
        })
    }

    fn features(&self) -> Features {
        Features {
            consumer_groups: true,
            persistent: true,
            ordered: true,
            history: true,
            redelivery: true,
            ordered_single_subscriber: false,
            strict_order: true,
            exactly_once: true,
            nack_delay: true,
            max_payload: None,
        }
    }
}

/// What a subscription shares with the ackers of its deliveries.
struct SubShared {
    inner: Arc<Inner>,
    topic: Box<str>,
    group: Box<str>,
    owner: Arc<str>,
    private: bool,
    state: Mutex<SettleState>,
    settled: Notify,
}

#[derive(Default)]
struct SettleState {
    in_flight: Option<InFlight>,
    outcome: Option<Outcome>,
    /// The stream is gone: the settle of the in-flight delivery also releases the lease.
    stream_gone: bool,
    /// The lease was given back (or is being): nothing more to release.
    released: bool,
    /// The head attempt count to store when releasing with nothing in flight.
    release_attempts: i64,
}

#[derive(Clone, Copy)]
struct InFlight {
    seq: i64,
    prev: i64,
    /// The head attempt count to store once this is acked (1 when the next is already read).
    next_attempts: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Acked { lease_until: i64 },
    Nacked { not_before: i64 },
    Lost,
}

impl SubShared {
    /// The release of this subscription's lease (or private group), unless already done or a
    /// delivery is in flight (its settle releases then).
    fn take_release(self: Arc<Self>) -> Option<impl std::future::Future<Output = ()>> {
        let head_attempts = {
            let mut state = self.state.lock();
            state.stream_gone = true;
            if state.released || state.in_flight.is_some() {
                return None;
            }
            state.released = true;
            state.release_attempts
        };
        Some(async move {
            let inner = &self.inner;
            let (topic, group, owner) = (&*self.topic, &*self.group, &*self.owner);
            let result = if self.private {
                dispatch!(&inner.pool, (pool, ops) => ops::delete_group(pool, &inner.queries, topic, group).await)
            } else {
                dispatch!(&inner.pool, (pool, ops) => ops::release(
                    pool, &inner.queries, topic, group, owner, head_attempts,
                ).await)
            };
            inner.subscriptions.lock().remove(&self.owner);
            match result {
                Ok(()) => wake(&inner.config.table_prefix, topic),
                Err(error) => tracing::debug!(%error, "SQL backend: releasing a subscription's lease failed"),
            }
        })
    }

    async fn settle(self: Arc<Self>, token: u64, nack: Option<Duration>) -> Result<()> {
        let (flight, release) = {
            let mut state = self.state.lock();
            match state.in_flight {
                Some(flight) if flight.seq as u64 == token && state.outcome.is_none() => {
                    if state.stream_gone {
                        state.released = true;
                    }
                    (flight, state.stream_gone)
                }
                _ => return Err(Error::new(ErrorKind::Backend, "delivery already settled")),
            }
        };
        let inner = &self.inner;
        let (topic, group, owner) = (&*self.topic, &*self.group, &*self.owner);
        let result = match nack {
            None => {
                let lease_until = now_ms() + millis(inner.config.ack_deadline);
                let new_owner = if release { None } else { Some(owner) };
                dispatch!(&inner.pool, (pool, ops) => ops::ack(
                    pool, &inner.queries, topic, group, owner, new_owner, flight.seq, flight.prev,
                    if release { 0 } else { flight.next_attempts }, lease_until,
                ).await)
                .map(|done| if done { Outcome::Acked { lease_until } } else { Outcome::Lost })
            }
            Some(delay) => {
                let not_before = now_ms() + millis(delay);
                dispatch!(&inner.pool, (pool, ops) => ops::nack(
                    pool, &inner.queries, topic, group, owner, flight.prev, not_before,
                ).await)
                .map(|done| if done { Outcome::Nacked { not_before } } else { Outcome::Lost })
            }
        };
        let outcome = *result.as_ref().unwrap_or(&Outcome::Lost);
        {
            let mut state = self.state.lock();
            state.in_flight = None;
            state.outcome = Some(outcome);
        }
        self.settled.notify_one();
        if matches!(outcome, Outcome::Nacked { .. }) || release {
            wake(&inner.config.table_prefix, topic);
        }
        if release {
            if self.private {
                let _ = dispatch!(&inner.pool, (pool, ops) => ops::delete_group(pool, &inner.queries, topic, group).await);
            }
            inner.subscriptions.lock().remove(&self.owner);
        }
        match result? {
            Outcome::Lost if nack.is_none() => Err(Error::new(
                ErrorKind::Backend,
                "ack too late: the group's lease expired (ack deadline) and the message will be delivered again",
            )),
            _ => Ok(()),
        }
    }
}

/// Settles the deliveries of one subscription; the token is the message's sequence number.
struct SqlAcker(Arc<SubShared>);

impl AckSink for SqlAcker {
    fn ack(&self, token: u64, _message: Option<Message>) -> OpFuture<'static> {
        OpFuture::boxed(self.0.clone().settle(token, None))
    }

    fn nack(&self, token: u64, _message: Option<Message>, delay: Option<Duration>) -> OpFuture<'static> {
        OpFuture::boxed(self.0.clone().settle(token, Some(delay.unwrap_or_default())))
    }
}

struct SqlStream {
    sub: Arc<SubShared>,
    signal: Arc<Notify>,
    cancel: CancellationToken,
    /// Claimed rows not yet delivered.
    buffer: VecDeque<ops::Row>,
    /// The group's `acked` as of our lease.
    acked: i64,
    /// The head attempt count as stored.
    head_attempts: i64,
    /// Our lease, as far as we know.
    lease_until: i64,
    /// The next buffered row is the first of its claim (delivered with `head_attempts`).
    first_of_claim: bool,
}

impl SqlStream {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        let poll = self.sub.inner.config.poll_interval;
        let mut not_before = 0;
        loop {
            if self.cancel.is_cancelled() {
                return None;
            }
            // Strict order: wait for the previous delivery to be settled.
            let pending = {
                let mut state = self.sub.state.lock();
                match state.outcome.take() {
                    Some(outcome) => Some(outcome),
                    None if state.in_flight.is_some() => None,
                    None => Some(Outcome::Acked { lease_until: self.lease_until }),
                }
            };
            match pending {
                None => {
                    let settled = self.sub.settled.notified();
                    tokio::select! {
                        () = settled => {}
                        () = self.cancel.cancelled() => return None,
                    }
                    continue;
                }
                Some(Outcome::Acked { lease_until }) => {
                    self.lease_until = lease_until;
                    self.sub.state.lock().release_attempts = 0;
                }
                Some(Outcome::Nacked { not_before: at }) => {
                    self.buffer.clear();
                    not_before = at;
                }
                Some(Outcome::Lost) => self.buffer.clear(),
            }
            let now = now_ms();
            // A buffer whose lease has (nearly) run out is no longer ours to deliver.
            let margin = millis(self.sub.inner.config.ack_deadline) / 10;
            if !self.buffer.is_empty() && now + margin >= self.lease_until {
                self.buffer.clear();
            }
            if let Some((seq, id, metadata, payload)) = self.buffer.pop_front() {
                let attempt = if std::mem::take(&mut self.first_of_claim) { self.head_attempts } else { 1 };
                let next_attempts = i64::from(!self.buffer.is_empty());
                self.sub.state.lock().in_flight = Some(InFlight { seq, prev: self.acked, next_attempts });
                self.acked = seq;
                self.head_attempts = next_attempts;
                let message = decode_row(&id, &metadata, payload);
                let acker = Acker::new(Arc::new(SqlAcker(self.sub.clone())), seq as u64, None);
                let attempt = u32::try_from(attempt.max(1)).unwrap_or(u32::MAX);
                return Some(Ok(Delivery::new(message, attempt, acker)));
            }
            // Nothing buffered: claim the group and read a batch.
            let signal = self.signal.clone();
            let woken = signal.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if now >= not_before {
                match self.claim(now).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(error) => {
                        if self.cancel.is_cancelled() {
                            return None;
                        }
                        // Report it, then go on polling (the database may come back).
                        tokio::select! {
                            () = tokio::time::sleep(poll) => {}
                            () = self.cancel.cancelled() => return None,
                        }
                        return Some(Err(error));
                    }
                }
            }
            let wait = if not_before > now {
                poll.min(Duration::from_millis((not_before - now) as u64))
            } else {
                poll
            };
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(wait) => {}
                () = self.cancel.cancelled() => return None,
            }
        }
    }

    /// Takes the group's lease and reads a batch; `false` when there is nothing for us.
    async fn claim(&mut self, now: i64) -> Result<bool> {
        let inner = &self.sub.inner;
        let config = &inner.config;
        let lease_until = now + millis(config.ack_deadline);
        let batch = i64::try_from(config.batch_size).unwrap_or(i64::MAX);
        let (topic, group, owner) = (&*self.sub.topic, &*self.sub.group, &*self.sub.owner);
        let claimed = dispatch!(&inner.pool, (pool, ops) => ops::claim(
            pool, &inner.queries, topic, group, owner, now, lease_until, batch,
        ).await)?;
        let Some((acked, attempts, rows)) = claimed else { return Ok(false) };
        self.acked = acked;
        self.lease_until = lease_until;
        if rows.is_empty() {
            // Claimed but nothing to read (rows removed by hand): give the lease back.
            self.head_attempts = (attempts - 1).max(0);
            dispatch!(&inner.pool, (pool, ops) => ops::release(
                pool, &inner.queries, topic, group, owner, self.head_attempts,
            ).await)?;
            return Ok(false);
        }
        self.head_attempts = attempts;
        self.first_of_claim = true;
        self.buffer = rows.into();
        // Released before delivering the head, the count goes back to what it was.
        self.sub.state.lock().release_attempts = (attempts - 1).max(0);
        Ok(true)
    }
}

impl Drop for SqlStream {
    fn drop(&mut self) {
        // Give the group back now rather than at the lease's end. With a delivery in flight the
        // lease stays until it is settled (the settle releases it), so a handler that finishes
        // after the subscription was dropped can still ack.
        let Some(release) = self.sub.clone().take_release() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        handle.spawn(self.sub.inner.tasks.track_future(release));
    }
}
