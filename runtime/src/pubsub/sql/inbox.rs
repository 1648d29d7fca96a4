//! [`SqlInbox`]: the transactional inbox in the SQL backend's database. A handler that takes a
//! transaction ([`Tx`](crate::inbox::Tx)) runs in one transaction of this database that records
//! the message as handled (the inbox), holds the handler's own writes, and writes its outputs to
//! the backend's topics (the outbox); this file holds the database half of it.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_core::future::BoxFuture;

use super::db::{backend_error, now_ms, Dialect};
use super::keyed::numbered;
use super::ops::{create_tables, dispatch};
use super::pubsub::SqlPubSub;
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;

/// The transactional inbox in the database of a [`SqlPubSub`] (SQLite, PostgreSQL, MySQL /
/// MariaDB). Provide it as application state, and every handler that takes a
/// [`Tx`](crate::inbox::Tx) of that database handles each message **effectively once**:
///
/// - before the handler runs, one transaction is begun and the message's key (the consumer group,
///   the handler's name and the message's id) is inserted into `{prefix}inbox`. If the key is there already, the
///   message was handled by a transaction that committed: the handler is not run and the
///   delivery is acked. (A concurrent delivery of the same message waits for the first
///   transaction on the key's lock, then sees its outcome.)
/// - the handler gets the transaction as its `Tx` argument and makes its own writes in it;
/// - what it returns is written to this pub/sub's topics inside the same transaction (with
///   [`SqlPubSub::publish_in`]: the outbox), then the transaction commits;
/// - the delivery is acked only after the commit. A failure, a panic or a crash before the
///   commit rolls everything back (key, writes, outputs) and the message comes again.
///
/// The consuming backend can be any: the delivery's ack is the only thing outside the
/// transaction, and a redelivery after a commit whose ack was lost is recognised by its key. The
/// outputs are messages of this pub/sub: to send them to another broker, relay their topics with
/// a [`Forwarder`](crate::router::Forwarder).
///
#[cfg_attr(feature = "postgres", doc = "```no_run")]
#[cfg_attr(not(feature = "postgres"), doc = "```ignore")]
/// use millstream::pubsub::sql::{sqlx::Postgres, SqlConfig, SqlInbox, SqlPubSub};
/// use millstream::{App, Tx};
/// # #[derive(serde::Deserialize)] struct Order { id: i64 }
/// # #[derive(serde::Serialize)] struct Invoice { order: i64 }
/// # impl millstream::Publishable for Invoice {}
///
/// #[millstream::handler(topic = "orders", publish = "invoices")]
/// async fn bill(order: Order, mut tx: Tx<Postgres>) -> millstream::Result<Invoice> {
///     sqlx::query("INSERT INTO bills (order_id) VALUES ($1)")
///         .bind(order.id)
///         .execute(&mut *tx)
///         .await
///         .map_err(millstream::Error::backend)?;
///     Ok(Invoice { order: order.id }) // written to `invoices` in the same transaction
/// }
///
/// # async fn run() -> millstream::Result<()> {
/// let db = SqlPubSub::connect("postgres://app@db/app", SqlConfig::default()).await?;
/// App::from_registry().pubsub(db.clone()).state(SqlInbox::new(&db)).run().await
/// # }
/// ```
///
/// # Message ids
/// The inbox recognises a redelivery by the message's id, so the id must be the same on every
/// delivery: it is for messages millstream published (on every backend), for NATS, Kafka and
/// Redis messages of other publishers (their ids come from the message), but not for AMQP
/// messages published without a `message_id` property, nor for rows written into the SQL
/// backend's tables by other programs with an id that is not a UUID: such messages get a new id
/// on each delivery and would be handled again.
///
/// # Replies and acks
/// A request's replies are sent after the commit, on the backend the requester waits on (not
/// through the outbox); a request handled before gets no second reply. An
/// [`InstantAck`](crate::middleware::InstantAck) layer acks before the transaction: do not put
/// one in front of a transactional handler.
///
/// # Table
/// `{prefix}inbox` ([`SqlConfig::table_prefix`](super::SqlConfig::table_prefix)): one row per
/// handled message, group and handler (`grp`, `handler`, `message_id`, `handled_ms`), created on first use or
/// by [`ensure_schema`](Self::ensure_schema). Rows are kept until
/// [`purge_older_than`](Self::purge_older_than) deletes them: keep them longer than a message
/// can be redelivered (the consuming broker's retention of unacked messages).
///
/// # Concurrency
/// The transaction stays open while the handler runs: on PostgreSQL and MySQL each running
/// handler holds one pooled connection (size the pool for the handlers' concurrency, plus one
/// for creating topics and the backend's own traffic); on SQLite
/// it holds the database's write lock, so transactional handlers of one SQLite file run one at a
/// time.
#[derive(Clone)]
pub struct SqlInbox {
    inner: Arc<Inner>,
}

struct Inner {
    pubsub: SqlPubSub,
    table: String,
    schema: Vec<String>,
    schema_lock: Option<String>,
    /// Inserts a key; affects no row when it is there already.
    insert: String,
    contains: String,
    purge: String,
    created: tokio::sync::OnceCell<()>,
}

impl SqlInbox {
    /// The inbox in `pubsub`'s database, sharing its pool and table prefix.
    pub fn new(pubsub: &SqlPubSub) -> SqlInbox {
        let dialect = pubsub.dialect();
        let table = format!("{}inbox", pubsub.inner.config.table_prefix);
        let (text, big, options) = match dialect {
            // (One B-tree, the key's: a rowid table would keep the key's index beside it.)
            Dialect::Sqlite => ("TEXT", "INTEGER", " WITHOUT ROWID"),
            Dialect::Postgres => ("TEXT", "BIGINT", ""),
            Dialect::MySql => {
                ("VARCHAR(255)", "BIGINT", " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin")
            }
        };
        // (MySQL: three keys of 255 characters of 4 bytes each fit InnoDB's 3072-byte key.)
        let schema = vec![format!(
            "CREATE TABLE IF NOT EXISTS {table} (grp {text} NOT NULL, handler {text} NOT NULL, \
             message_id {text} NOT NULL, handled_ms {big} NOT NULL, PRIMARY KEY (grp, handler, message_id)){options}"
        )];
        let insert = match dialect {
            Dialect::MySql => {
                format!(
                    "INSERT IGNORE INTO {table} (grp, handler, message_id, handled_ms) VALUES (?, ?, ?, ?)"
                )
            }
            _ => numbered(
                dialect,
                format!(
                    "INSERT INTO {table} (grp, handler, message_id, handled_ms) VALUES (?, ?, ?, ?) \
                     ON CONFLICT (grp, handler, message_id) DO NOTHING"
                ),
            ),
        };
        let inner = Inner {
            pubsub: pubsub.clone(),
            contains: numbered(
                dialect,
                format!("SELECT COUNT(*) FROM {table} WHERE grp = ? AND handler = ? AND message_id = ?"),
            ),
            purge: numbered(dialect, format!("DELETE FROM {table} WHERE handled_ms < ?")),
            schema_lock: (dialect == Dialect::Postgres)
                .then(|| "SELECT pg_advisory_xact_lock(7305418842461221)".into()),
            table,
            schema,
            insert,
            created: tokio::sync::OnceCell::new(),
        };
        SqlInbox { inner: Arc::new(inner) }
    }

    /// The pub/sub whose database holds the inbox, and whose topics the outputs are written to.
    pub fn pubsub(&self) -> &SqlPubSub {
        &self.inner.pubsub
    }

    /// The database.
    pub fn dialect(&self) -> Dialect {
        self.inner.pubsub.dialect()
    }

    /// The inbox table's name.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// Creates the inbox table if it does not exist (done on first use otherwise), and the
    /// pub/sub's own tables.
    pub async fn ensure_schema(&self) -> Result<()> {
        self.inner.pubsub.ensure_schema().await?;
        self.inner
            .created
            .get_or_try_init(|| {
                create_tables(
                    &self.inner.pubsub.inner.pool,
                    self.inner.schema_lock.as_deref(),
                    &self.inner.schema,
                )
            })
            .await
            .map(|_| ())
    }

    /// Whether handler `handler`, reading in consumer group `group` (its own name unless it names
    /// one), has handled the message `message_id` (its transaction committed).
    pub async fn contains(&self, group: &str, handler: &str, message_id: &str) -> Result<bool> {
        self.ensure_schema().await?;
        let query = &self.inner.contains;
        let count: i64 = dispatch!(&self.inner.pubsub.inner.pool, (pool, _ops) => {
            sqlx::query_scalar(query)
                .bind(group)
                .bind(handler)
                .bind(message_id)
                .fetch_one(pool)
                .await
                .map_err(backend_error)?
        });
        Ok(count > 0)
    }

    /// Deletes the keys of messages handled more than `age` ago (by this process's clock); returns
    /// how many. A message redelivered after its key is gone is handled again.
    pub async fn purge_older_than(&self, age: Duration) -> Result<u64> {
        self.ensure_schema().await?;
        let before = now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        let query = &self.inner.purge;
        let done = dispatch!(&self.inner.pubsub.inner.pool, (pool, _ops) => {
            sqlx::query(query).bind(before).execute(pool).await.map_err(backend_error)?.rows_affected()
        });
        Ok(done)
    }

    /// The error for a `Tx` of another database than this inbox's.
    fn wrong_database(&self, wanted: Dialect) -> Error {
        Error::new(
            ErrorKind::Config,
            format!(
                "a Tx of {wanted:?} was asked for, but the SqlInbox is in a {:?} database",
                self.dialect()
            ),
        )
    }
}

impl fmt::Debug for SqlInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlInbox")
            .field("dialect", &self.dialect())
            .field("table", &self.inner.table)
            .finish()
    }
}

mod sealed {
    pub trait Sealed {}
}

/// What names a handled message in the inbox: the consumer group and handler that handled it,
/// and its id; with the handler's publish topic, created before the transaction begins.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct InboxKey<'a> {
    /// The consumer group the handler reads in.
    pub group: &'a str,
    /// The handler's name (the same for each of its retry topics).
    pub handler: &'a str,
    /// The message's id.
    pub message_id: &'a str,
    /// The handler's publish topic, if any.
    pub publish: Option<&'a str>,
}

/// A database a [`Tx`](crate::inbox::Tx) can be of: `sqlx::Sqlite`, `sqlx::Postgres` or
/// `sqlx::MySql` (each with its feature). Sealed; its methods are the inbox's database half.
pub trait InboxDatabase: sqlx::Database + sealed::Sealed {
    /// The database's dialect.
    const DIALECT: Dialect;

    /// Begins a transaction and records the message of `key` as handled in it; `None` (and the
    /// transaction rolled back) when it was recorded before. The handler's publish topic is
    /// created first (outside the transaction, which then needs no second connection for it).
    #[doc(hidden)]
    fn begin<'a>(
        inbox: &'a SqlInbox,
        key: InboxKey<'a>,
    ) -> BoxFuture<'a, Result<Option<sqlx::Transaction<'static, Self>>>>;

    /// Writes `outputs` to the inbox's topics in `tx` and commits it.
    #[doc(hidden)]
    fn commit(
        inbox: &SqlInbox,
        tx: sqlx::Transaction<'static, Self>,
        outputs: Vec<(Cow<'static, str>, Message)>,
    ) -> BoxFuture<'static, Result<()>>;
}

macro_rules! inbox_database {
    ($feature:literal, $db:ty, $variant:ident, $dialect:expr) => {
        #[cfg(feature = $feature)]
        impl sealed::Sealed for $db {}

        #[cfg(feature = $feature)]
        impl InboxDatabase for $db {
            const DIALECT: Dialect = $dialect;

            fn begin<'a>(
                inbox: &'a SqlInbox,
                key: InboxKey<'a>,
            ) -> BoxFuture<'a, Result<Option<sqlx::Transaction<'static, Self>>>> {
                Box::pin(async move {
                    inbox.ensure_schema().await?;
                    if let Some(topic) = key.publish {
                        inbox.inner.pubsub.ensure_topic(topic).await?;
                    }
                    #[allow(unreachable_patterns)]
                    let pool = match &inbox.inner.pubsub.inner.pool {
                        super::db::Pool::$variant(pool) => pool,
                        _ => return Err(inbox.wrong_database(Self::DIALECT)),
                    };
                    let mut tx = pool.begin().await.map_err(backend_error)?;
                    let inserted = sqlx::query(&inbox.inner.insert)
                        .bind(key.group)
                        .bind(key.handler)
                        .bind(key.message_id)
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await
                        .map_err(backend_error)?
                        .rows_affected();
                    // (Not inserted: rolled back as `tx` drops.)
                    Ok((inserted > 0).then_some(tx))
                })
            }

            fn commit(
                inbox: &SqlInbox,
                mut tx: sqlx::Transaction<'static, Self>,
                outputs: Vec<(Cow<'static, str>, Message)>,
            ) -> BoxFuture<'static, Result<()>> {
                let inbox = inbox.clone();
                Box::pin(async move {
                    let pubsub = &inbox.inner.pubsub;
                    let mut topics: Vec<Cow<'static, str>> = Vec::new();
                    let mut outputs = outputs.into_iter().peekable();
                    // Consecutive outputs to one topic go in one write, in order.
                    while let Some((topic, first)) = outputs.next() {
                        let mut run = vec![first];
                        while let Some((_, message)) = outputs.next_if(|(next, _)| *next == topic) {
                            run.push(message);
                        }
                        pubsub.publish_in(&mut *tx, &topic, run).await?;
                        if !topics.contains(&topic) {
                            topics.push(topic);
                        }
                    }
                    if topics.is_empty() && Self::DIALECT == Dialect::Postgres {
                        // PostgreSQL answers COMMIT in a failed transaction (a statement of the
                        // handler's failed and it carried on) with a rollback, not an error: a
                        // statement finds out first, so that the message is nacked, not acked
                        // with nothing committed. (Writing outputs found out already.)
                        sqlx::query("SELECT 1").execute(&mut *tx).await.map_err(backend_error)?;
                    }
                    tx.commit().await.map_err(backend_error)?;
                    for topic in &topics {
                        pubsub.inner.wake(topic);
                    }
                    Ok(())
                })
            }
        }
    };
}

inbox_database!("sqlite", sqlx::Sqlite, Sqlite, Dialect::Sqlite);
inbox_database!("postgres", sqlx::Postgres, Postgres, Dialect::Postgres);
inbox_database!("mysql", sqlx::MySql, MySql, Dialect::MySql);
