//! [`SqlDelayStore`]: delayed messages in the SQL backend's database, kept across restarts and
//! shared by every process that relays from it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row as _;

use super::db::{backend_error, Dialect};
use super::keyed::numbered;
use super::ops::{create_tables, dispatch};
use super::pubsub::SqlPubSub;
use super::stored::{decode_head, StoredMessage};
use crate::error::Result;
use crate::message::Message;
use crate::op::OpFuture;
use crate::store::{DelayStore, DelayedMessage, TakenMessage};

/// Rows one `done` deletes per statement.
const DELETE_CHUNK: usize = 500;

/// A [`DelayStore`] in the database of a [`SqlPubSub`] (SQLite, PostgreSQL, MySQL / MariaDB):
/// table `{prefix}delayed`, one row per message (its scope, due time, lease, topic, id,
/// metadata and payload), indexed by scope and due time. Messages survive restarts of every
/// process; relays of several processes take disjoint messages (PostgreSQL locks the rows it
/// takes with `FOR UPDATE SKIP LOCKED`, MySQL / MariaDB with `FOR UPDATE` (relays wait for each
/// other there: `SKIP LOCKED` needs MariaDB 10.6), SQLite takes them in one `UPDATE ..
/// RETURNING`). Give it to [`App::delays`](crate::App::delays):
///
/// ```no_run
/// # use millstream::pubsub::sql::{SqlConfig, SqlDelayStore, SqlPubSub};
/// # use millstream::App;
/// # async fn f() -> millstream::Result<()> {
/// let pubsub = SqlPubSub::connect("sqlite://app.db?mode=rwc", SqlConfig::default()).await?;
/// let app = App::from_registry().pubsub(pubsub.clone()).delays(SqlDelayStore::new(&pubsub));
/// # let _ = app; Ok(()) }
/// ```
///
/// The due messages may go to any backend: the store only keeps them.
#[derive(Clone)]
pub struct SqlDelayStore {
    inner: Arc<Inner>,
}

struct Inner {
    pubsub: SqlPubSub,
    tables: Tables,
    created: tokio::sync::OnceCell<()>,
}

/// The statements, per dialect and table prefix.
struct Tables {
    dialect: Dialect,
    schema: Vec<String>,
    schema_lock: Option<String>,
    insert: String,
    /// PostgreSQL and SQLite: take and lease in one statement; MySQL: select (locking) ...
    take: String,
    /// ... then lease (MySQL, with `?` placeholders appended per row).
    lease_prefix: String,
    delete_prefix: String,
    next_due: String,
    count: String,
}

impl Tables {
    fn new(dialect: Dialect, prefix: &str) -> Tables {
        let table = format!("{prefix}delayed");
        let index = format!("{table}_due");
        let (scope, text, id, blob, big, serial, options) = match dialect {
            Dialect::Sqlite => {
                ("TEXT", "TEXT", "TEXT", "BLOB", "INTEGER", "INTEGER PRIMARY KEY AUTOINCREMENT", "")
            }
            Dialect::Postgres => ("TEXT", "TEXT", "TEXT", "BYTEA", "BIGINT", "BIGSERIAL PRIMARY KEY", ""),
            Dialect::MySql => (
                "VARCHAR(255)",
                "LONGTEXT",
                "VARCHAR(64)",
                "LONGBLOB",
                "BIGINT",
                "BIGINT AUTO_INCREMENT PRIMARY KEY",
                " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            ),
        };
        let create = |indexes: &str| {
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (seq {serial}, scope {scope} NOT NULL, due_ms {big} NOT NULL, \
                 lease_until {big} NOT NULL, topic {text} NOT NULL, message_id {id} NOT NULL, \
                 metadata {text} NOT NULL, payload {blob} NOT NULL{indexes}){options}"
            )
        };
        let schema = if dialect == Dialect::MySql {
            vec![create(&format!(", INDEX {index} (scope, due_ms)"))]
        } else {
            vec![create(""), format!("CREATE INDEX IF NOT EXISTS {index} ON {table} (scope, due_ms)")]
        };
        let n = |sql: String| numbered(dialect, sql);
        let columns = "seq, due_ms, topic, message_id, metadata, payload";
        let due = "scope = ? AND due_ms <= ? AND lease_until <= ?";
        let take = match dialect {
            // (`SKIP LOCKED` needs MariaDB 10.6: concurrent relays wait for each other instead.)
            Dialect::MySql => {
                format!("SELECT {columns} FROM {table} WHERE {due} ORDER BY due_ms, seq LIMIT ? FOR UPDATE")
            }
            Dialect::Postgres => n(format!(
                "UPDATE {table} SET lease_until = ? WHERE seq IN (SELECT seq FROM {table} WHERE {due} \
                 ORDER BY due_ms, seq LIMIT ? FOR UPDATE SKIP LOCKED) RETURNING {columns}"
            )),
            Dialect::Sqlite => format!(
                "UPDATE {table} SET lease_until = ? WHERE seq IN (SELECT seq FROM {table} WHERE {due} \
                 ORDER BY due_ms, seq LIMIT ?) RETURNING {columns}"
            ),
        };
        Tables {
            dialect,
            schema,
            schema_lock: (dialect == Dialect::Postgres).then(|| "SELECT pg_advisory_xact_lock(7305418842461220)".into()),
            insert: n(format!(
                "INSERT INTO {table} (scope, due_ms, lease_until, topic, message_id, metadata, payload) \
                 VALUES (?, ?, 0, ?, ?, ?, ?)"
            )),
            take,
            lease_prefix: format!("UPDATE {table} SET lease_until = ? WHERE seq IN ("),
            delete_prefix: format!("DELETE FROM {table} WHERE scope = ? AND seq IN ("),
            next_due: n(format!(
                "SELECT MIN(CASE WHEN lease_until > due_ms THEN lease_until ELSE due_ms END) FROM {table} WHERE scope = ?"
            )),
            count: n(format!("SELECT COUNT(*) FROM {table} WHERE scope = ?")),
        }
    }
}

/// `prefix` followed by `n` placeholders and `)`, numbered from `first` on PostgreSQL.
fn in_list(dialect: Dialect, prefix: &str, n: usize) -> String {
    let mut sql = String::with_capacity(prefix.len() + n * 4 + 1);
    sql.push_str(prefix);
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('?');
    }
    sql.push(')');
    numbered(dialect, sql)
}

fn as_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A text column of a taken row. MySQL / MariaDB report a text column of a binary collation
/// (`utf8mb4_bin`, which the table uses so that topics and ids compare byte by byte) as binary on
/// some server versions, which sqlx will not decode as a `String`: read as bytes then.
macro_rules! text {
    ($row:expr, $index:expr) => {
        match $row.try_get::<String, _>($index) {
            Ok(text) => text,
            Err(_) => {
                let bytes: Vec<u8> = $row.try_get($index).map_err(backend_error)?;
                String::from_utf8(bytes).map_err(|error| {
                    crate::error::Error::new(
                        crate::error::ErrorKind::Backend,
                        format!("a delayed message's column {} is not UTF-8: {error}", $index),
                    )
                })?
            }
        }
    };
}

/// A taken row: `seq, due_ms, topic, message_id, metadata, payload`.
macro_rules! taken_row {
    ($row:expr) => {{
        let row = &$row;
        let seq: i64 = row.try_get(0).map_err(backend_error)?;
        let due_ms: i64 = row.try_get(1).map_err(backend_error)?;
        let topic = text!(row, 2);
        let message_id = text!(row, 3);
        let metadata = text!(row, 4);
        let payload: Vec<u8> = row.try_get(5).map_err(backend_error)?;
        let (id, metadata) = decode_head(&message_id, &metadata);
        TakenMessage {
            seq: seq as u64,
            delayed: DelayedMessage {
                topic,
                message: Message::from_parts(id, metadata, payload.into()),
                due_ms: due_ms.max(0) as u64,
            },
        }
    }};
}

impl SqlDelayStore {
    /// A store in `pubsub`'s database, sharing its pool and table prefix.
    pub fn new(pubsub: &SqlPubSub) -> Self {
        let tables = Tables::new(pubsub.dialect(), &pubsub.inner.config.table_prefix);
        SqlDelayStore {
            inner: Arc::new(Inner { pubsub: pubsub.clone(), tables, created: tokio::sync::OnceCell::new() }),
        }
    }

    /// Creates the table if it does not exist (done on first use otherwise).
    pub async fn ensure_schema(&self) -> Result<()> {
        self.inner.ensure().await
    }
}

impl Inner {
    async fn ensure(&self) -> Result<()> {
        self.created
            .get_or_try_init(|| {
                create_tables(
                    &self.pubsub.inner.pool,
                    self.tables.schema_lock.as_deref(),
                    &self.tables.schema,
                )
            })
            .await
            .map(|_| ())
    }

    async fn schedule(&self, scope: &str, messages: Vec<DelayedMessage>) -> Result<()> {
        self.ensure().await?;
        if messages.is_empty() {
            return Ok(());
        }
        self.pubsub.inner.check_sizes(messages.iter().map(|m| &m.message))?;
        let t = &self.tables;
        dispatch!(&self.pubsub.inner.pool, (pool, _ops) => {
            let mut tx = pool.begin().await.map_err(backend_error)?;
            for DelayedMessage { topic, message, due_ms } in messages {
                let stored = StoredMessage::new(message);
                sqlx::query(&t.insert)
                    .bind(scope)
                    .bind(as_i64(due_ms))
                    .bind(topic)
                    .bind(stored.id)
                    .bind(stored.metadata)
                    .bind(stored.payload.as_ref())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend_error)?;
            }
            tx.commit().await.map_err(backend_error)
        })
    }

    async fn take_due(
        &self,
        scope: &str,
        now_ms: u64,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<TakenMessage>> {
        self.ensure().await?;
        let t = &self.tables;
        let now = as_i64(now_ms);
        let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut taken: Vec<TakenMessage> = dispatch!(&self.pubsub.inner.pool, (pool, _ops) => {
            if t.dialect == Dialect::MySql {
                let mut tx = pool.begin().await.map_err(backend_error)?;
                let rows = sqlx::query(&t.take)
                    .bind(scope).bind(now).bind(now).bind(limit)
                    .fetch_all(&mut *tx).await.map_err(backend_error)?;
                let taken = rows.iter().map(|row| Ok(taken_row!(row))).collect::<Result<Vec<_>>>()?;
                if !taken.is_empty() {
                    let sql = in_list(t.dialect, &t.lease_prefix, taken.len());
                    let mut query = sqlx::query(&sql).bind(until);
                    for message in &taken {
                        query = query.bind(message.seq as i64);
                    }
                    query.execute(&mut *tx).await.map_err(backend_error)?;
                }
                tx.commit().await.map_err(backend_error)?;
                taken
            } else {
                let rows = sqlx::query(&t.take)
                    .bind(until).bind(scope).bind(now).bind(now).bind(limit)
                    .fetch_all(pool).await.map_err(backend_error)?;
                rows.iter().map(|row| Ok(taken_row!(row))).collect::<Result<Vec<_>>>()?
            }
        });
        // (`RETURNING` gives no order.)
        taken.sort_by_key(|message| (message.delayed.due_ms, message.seq));
        Ok(taken)
    }

    async fn done(&self, scope: &str, seqs: &[u64]) -> Result<()> {
        self.ensure().await?;
        let t = &self.tables;
        for chunk in seqs.chunks(DELETE_CHUNK) {
            let sql = in_list(t.dialect, &t.delete_prefix, chunk.len());
            dispatch!(&self.pubsub.inner.pool, (pool, _ops) => {
                let mut query = sqlx::query(&sql).bind(scope);
                for seq in chunk {
                    query = query.bind(*seq as i64);
                }
                query.execute(pool).await.map_err(backend_error)?;
            });
        }
        Ok(())
    }

    async fn next_due(&self, scope: &str) -> Result<Option<u64>> {
        self.ensure().await?;
        let t = &self.tables;
        let next: Option<i64> = dispatch!(&self.pubsub.inner.pool, (pool, _ops) => {
            sqlx::query_scalar(&t.next_due).bind(scope).fetch_one(pool).await.map_err(backend_error)?
        });
        Ok(next.map(|ms| ms.max(0) as u64))
    }

    async fn count(&self, scope: &str) -> Result<u64> {
        self.ensure().await?;
        let t = &self.tables;
        let count: i64 = dispatch!(&self.pubsub.inner.pool, (pool, _ops) => {
            sqlx::query_scalar(&t.count).bind(scope).fetch_one(pool).await.map_err(backend_error)?
        });
        Ok(count.max(0) as u64)
    }
}

impl DelayStore for SqlDelayStore {
    fn schedule<'a>(&'a self, scope: &'a str, messages: Vec<DelayedMessage>) -> OpFuture<'a> {
        OpFuture::boxed(self.inner.schedule(scope, messages))
    }

    fn take_due<'a>(
        &'a self,
        scope: &'a str,
        now_ms: u64,
        limit: usize,
        lease: Duration,
    ) -> OpFuture<'a, Vec<TakenMessage>> {
        OpFuture::boxed(self.inner.take_due(scope, now_ms, limit, lease))
    }

    fn done<'a>(&'a self, scope: &'a str, seqs: &'a [u64]) -> OpFuture<'a> {
        OpFuture::boxed(self.inner.done(scope, seqs))
    }

    fn next_due<'a>(&'a self, scope: &'a str) -> OpFuture<'a, Option<u64>> {
        OpFuture::boxed(self.inner.next_due(scope))
    }

    fn count<'a>(&'a self, scope: &'a str) -> OpFuture<'a, u64> {
        OpFuture::boxed(self.inner.count(scope))
    }
}

impl fmt::Debug for SqlDelayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlDelayStore").field("dialect", &self.inner.tables.dialect).finish_non_exhaustive()
    }
}
