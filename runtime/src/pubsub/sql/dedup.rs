//! [`SqlDedupStore`]: a [`DedupStore`] in a table of the SQL backend's database, so the
//! [`Deduplicator`](crate::middleware::Deduplicator)s of several processes share their keys.

use std::fmt;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{
    backend_error, backoff, is_retryable, millis, number_placeholders, ops, retrying, Dialect, Pool,
    SqlConfig, SqlPubSub, RETRY_ATTEMPTS,
};
use crate::error::{Error, ErrorKind, Result};
use crate::pubsub::OpFuture;
use crate::store::DedupStore;

/// Rows an opportunistic purge deletes at most (a purge that deletes this many runs again at the
/// next insert).
const PURGE_BATCH: u64 = 5_000;

/// The longest window kept, about a thousand years (longer ones are cut to it): expiry times
/// stay far from overflowing.
const MAX_TTL_MS: i64 = 1_000 * 366 * 24 * 3_600 * 1_000;

/// A [`DedupStore`] in the database of a [`SqlPubSub`] (SQLite, PostgreSQL, MySQL / MariaDB):
/// a [`Deduplicator`](crate::middleware::Deduplicator) of every process using the same database
/// and table prefix sees the same keys.
///
/// ```no_run
/// # use std::{sync::Arc, time::Duration};
/// # use millstream::middleware::Deduplicator;
/// # use millstream::pubsub::sql::{SqlConfig, SqlDedupStore, SqlPubSub};
/// # async fn f() -> millstream::Result<()> {
/// let pubsub = SqlPubSub::connect("postgres://app@db/app", SqlConfig::default()).await?;
/// let dedup = Deduplicator::new(Duration::from_secs(3600)).store(Arc::new(SqlDedupStore::new(&pubsub)));
/// # Ok(()) }
/// ```
///
/// # Table
/// One table, `{prefix}dedup` ([`SqlConfig::table_prefix`], default `millstream_dedup`), created
/// on first use (or by [`ensure_schema`](Self::ensure_schema)): one row per key, with its expiry
/// time in milliseconds since the Unix epoch, indexed. SQLite stores the key as is; PostgreSQL and
/// MySQL store its SHA-256 digest (computed by the database), so keys of any length and any text
/// fit a fixed-size primary key.
///
/// # Atomicity
/// [`insert_if_new`](DedupStore::insert_if_new) is atomic across connections and processes: of
/// concurrent inserts of one key, exactly one says it is new. A duplicate insert leaves the key's
/// expiry as it was; an expired row counts as absent (and is replaced).
///
/// # Clocks
/// Expiry times come from the **database's** clock (SQLite's is the process's own), so processes
/// sharing a PostgreSQL or MySQL database need not have synchronised clocks.
///
/// # Purging
/// Expired rows are deleted opportunistically: at most once per
/// [`purge_interval`](Self::purge_interval) (default one minute) per store, an insert also deletes
/// a bounded batch of expired rows (up to 5000; a full batch makes the next insert purge again).
/// [`purge_expired`](Self::purge_expired) deletes all of them at once.
///
/// The store shares the pool of the [`SqlPubSub`] it came from: closing both halves of a pub/sub
/// that opened its own pool closes the pool, and the store with it.
pub struct SqlDedupStore {
    pool: Pool,
    table: String,
    statements: Statements,
    schema: tokio::sync::OnceCell<()>,
    purge_interval: Option<Duration>,
    /// When the next opportunistic purge is due (`None`: at the next insert).
    next_purge: Mutex<Option<Instant>>,
}

/// The SQL text for one dialect and table.
struct Statements {
    dialect: Dialect,
    schema_lock: Option<String>,
    schema: Vec<String>,
    /// PostgreSQL, SQLite: an upsert returning a row iff the key was new (or expired). MySQL: an
    /// `INSERT IGNORE`, affecting a row iff the key was absent.
    insert: String,
    /// MySQL: deletes the key's row if it expired (binds the key).
    delete_expired: String,
    remove: String,
    /// Deletes up to `PURGE_BATCH` expired rows.
    purge: String,
}

impl Statements {
    fn new(dialect: Dialect, table: &str) -> Statements {
        // The database's clock in milliseconds since the epoch, and how a key is stored.
        let (now, key, key_type, expires_type, options) = match dialect {
            Dialect::Sqlite => (
                "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
                "?",
                "TEXT",
                "INTEGER",
                " WITHOUT ROWID",
            ),
            Dialect::Postgres => (
                "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT",
                "sha256(convert_to(?, 'UTF8'))",
                "BYTEA",
                "BIGINT",
                "",
            ),
            // `UNIX_TIMESTAMP()` and `NOW(6)` both read the statement's start time; combined this
            // way, no time zone conversion is involved (`UNIX_TIMESTAMP(NOW(3))` would convert from
            // the session's zone, ambiguous in a daylight saving fall-back hour).
            Dialect::MySql => (
                "(UNIX_TIMESTAMP() * 1000 + MICROSECOND(NOW(6)) DIV 1000)",
                "UNHEX(SHA2(?, 256))",
                "BINARY(32)",
                "BIGINT",
                " ENGINE=InnoDB",
            ),
        };
        let index = format!("{table}_expires");
        let schema = if dialect == Dialect::MySql {
            // (MySQL has no `CREATE INDEX IF NOT EXISTS`: the index comes with the table.)
            vec![format!(
                "CREATE TABLE IF NOT EXISTS {table} (dedup_key {key_type} NOT NULL PRIMARY KEY, \
                 expires_ms {expires_type} NOT NULL, INDEX {index} (expires_ms)){options}"
            )]
        } else {
            vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} (dedup_key {key_type} NOT NULL PRIMARY KEY, \
                     expires_ms {expires_type} NOT NULL){options}"
                ),
                format!("CREATE INDEX IF NOT EXISTS {index} ON {table} (expires_ms)"),
            ]
        };
        let (insert, purge) = if dialect == Dialect::MySql {
            (
                format!("INSERT IGNORE INTO {table} (dedup_key, expires_ms) VALUES ({key}, {now} + ?)"),
                format!(
                    "DELETE FROM {table} WHERE expires_ms <= {now} ORDER BY expires_ms LIMIT {PURGE_BATCH}"
                ),
            )
        } else {
            (
                // The update only happens to an expired row, so a live key keeps its expiry; the
                // row comes back only when inserted or updated.
                format!(
                    "INSERT INTO {table} (dedup_key, expires_ms) VALUES ({key}, {now} + ?) \
                     ON CONFLICT (dedup_key) DO UPDATE SET expires_ms = excluded.expires_ms \
                     WHERE {table}.expires_ms <= {now} RETURNING 1"
                ),
                // The outer condition is checked again on a row changed meanwhile (PostgreSQL),
                // so a key renewed since the subquery read it stays.
                format!(
                    "DELETE FROM {table} WHERE expires_ms <= {now} AND dedup_key IN \
                     (SELECT dedup_key FROM {table} WHERE expires_ms <= {now} LIMIT {PURGE_BATCH})"
                ),
            )
        };
        let numbered =
            |sql: String| if dialect == Dialect::Postgres { number_placeholders(&sql) } else { sql };
        Statements {
            dialect,
            schema_lock: (dialect == Dialect::Postgres)
                .then(|| "SELECT pg_advisory_xact_lock(7305418842461218)".to_owned()),
            schema,
            insert: numbered(insert),
            delete_expired: numbered(format!(
                "DELETE FROM {table} WHERE dedup_key = {key} AND expires_ms <= {now}"
            )),
            remove: numbered(format!("DELETE FROM {table} WHERE dedup_key = {key}")),
            purge,
        }
    }
}

impl SqlDedupStore {
    /// A store in `pubsub`'s database, sharing its pool and table prefix.
    pub fn new(pubsub: &SqlPubSub) -> Self {
        let pool = pubsub.inner.pool.clone();
        let table = format!("{}dedup", pubsub.inner.config.table_prefix);
        SqlDedupStore {
            statements: Statements::new(pool.dialect(), &table),
            pool,
            table,
            schema: tokio::sync::OnceCell::new(),
            purge_interval: Some(Duration::from_secs(60)),
            next_purge: Mutex::new(None),
        }
    }

    /// Connects to `url` like [`SqlPubSub::connect`] (`sqlite:...`, `postgres://...`,
    /// `mysql://...` / `mariadb://...`), using `config`'s table prefix and pool size.
    pub async fn connect(url: &str, config: SqlConfig) -> Result<Self> {
        Ok(Self::new(&SqlPubSub::connect(url, config).await?))
    }

    /// How often an insert also purges expired rows (`None`: never; call
    /// [`purge_expired`](Self::purge_expired) yourself). Default one minute.
    pub fn purge_interval(mut self, interval: Option<Duration>) -> Self {
        self.purge_interval = interval;
        self
    }

    /// The database.
    pub fn dialect(&self) -> Dialect {
        self.statements.dialect
    }

    /// The table's name (`{prefix}dedup`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table now rather than on first use (idempotent).
    pub async fn ensure_schema(&self) -> Result<()> {
        let statements = &self.statements;
        self.schema
            .get_or_try_init(|| async {
                dispatch!(&self.pool, (pool, _ops) => {
                    let mut tx = pool.begin().await.map_err(backend_error)?;
                    if let Some(lock) = &statements.schema_lock {
                        sqlx::query(lock).execute(&mut *tx).await.map_err(backend_error)?;
                    }
                    for statement in &statements.schema {
                        sqlx::query(statement).execute(&mut *tx).await.map_err(backend_error)?;
                    }
                    tx.commit().await.map_err(backend_error)
                })
            })
            .await
            .map(|_| ())
    }

    /// Deletes every expired row now; returns how many.
    pub async fn purge_expired(&self) -> Result<u64> {
        self.ensure_schema().await?;
        let mut total = 0;
        loop {
            let deleted = self.purge_batch().await?;
            total += deleted;
            if deleted < PURGE_BATCH {
                return Ok(total);
            }
        }
    }

    async fn purge_batch(&self) -> Result<u64> {
        let sql = &self.statements.purge;
        retrying(|| async {
            dispatch!(&self.pool, (pool, _ops) => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
                .map_err(backend_error))
        })
        .await
    }

    /// Purges a batch if one is due; failures are only logged (the next one tries again).
    async fn purge_if_due(&self) {
        let Some(interval) = self.purge_interval else { return };
        let now = Instant::now();
        {
            let mut next = self.next_purge.lock();
            if next.is_some_and(|at| now < at) {
                return;
            }
            *next = Some(now.checked_add(interval).unwrap_or(now + Duration::from_secs(365 * 24 * 3600)));
        }
        match self.purge_batch().await {
            Ok(deleted) if deleted >= PURGE_BATCH => *self.next_purge.lock() = None,
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, table = %self.table, "dedup store: purging expired keys failed")
            }
        }
    }

    async fn insert(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.ensure_schema().await?;
        let ttl = millis(ttl).min(MAX_TTL_MS);
        let fresh = if self.statements.dialect == Dialect::MySql {
            self.insert_mysql(key, ttl).await?
        } else {
            let sql = &self.statements.insert;
            retrying(|| async {
                dispatch!(&self.pool, (pool, _ops) => sqlx::query(sql)
                    .bind(key)
                    .bind(ttl)
                    .fetch_optional(pool)
                    .await
                    .map(|row| row.is_some())
                    .map_err(backend_error))
            })
            .await?
        };
        self.purge_if_due().await;
        Ok(fresh)
    }

    /// MySQL has no conditional upsert that reports what it did (with the found-rows flag sqlx
    /// sets, an `ON DUPLICATE KEY UPDATE` that changes nothing reports one row, like an insert).
    /// So: `INSERT IGNORE` (one row iff the key was absent; the primary key makes this atomic);
    /// on a duplicate, delete the row if it expired and, if that deleted it, insert again. Of
    /// concurrent inserts after an expiry only one deletes the row, and only one inserts.
    async fn insert_mysql(&self, key: &str, ttl: i64) -> Result<bool> {
        let Statements { insert, delete_expired, .. } = &self.statements;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let step: Result<Option<bool>> = dispatch!(&self.pool, (pool, _ops) => {
                let inserted = sqlx::query(insert)
                    .bind(key)
                    .bind(ttl)
                    .execute(pool)
                    .await
                    .map_err(backend_error)
                    .map(|done| done.rows_affected());
                match inserted {
                    Ok(1) => Ok(Some(true)),
                    Ok(_) => sqlx::query(delete_expired)
                        .bind(key)
                        .execute(pool)
                        .await
                        .map_err(backend_error)
                        // Nothing expired to delete: the key is live.
                        .map(|done| (done.rows_affected() == 0).then_some(false)),
                    Err(error) => Err(error),
                }
            });
            match step {
                Ok(Some(fresh)) => return Ok(fresh),
                // The expired row is gone: insert again.
                Ok(None) if attempt < RETRY_ATTEMPTS => {}
                Ok(None) => {
                    return Err(Error::new(
                        ErrorKind::Backend,
                        "dedup store: the key kept expiring while being inserted",
                    ))
                }
                // Two inserts waiting on one deleted row can deadlock: the database picked us.
                Err(error) if attempt < RETRY_ATTEMPTS && is_retryable(&error) => backoff(attempt).await,
                Err(error) => return Err(error),
            }
        }
    }

    async fn remove_key(&self, key: &str) -> Result<()> {
        self.ensure_schema().await?;
        let sql = &self.statements.remove;
        retrying(|| async {
            dispatch!(&self.pool, (pool, _ops) => sqlx::query(sql)
                .bind(key)
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(backend_error))
        })
        .await
    }
}

impl DedupStore for SqlDedupStore {
    fn insert_if_new<'a>(&'a self, key: &'a str, ttl: Duration) -> OpFuture<'a, bool> {
        OpFuture::boxed(self.insert(key, ttl))
    }

    fn remove<'a>(&'a self, key: &'a str) -> OpFuture<'a> {
        OpFuture::boxed(self.remove_key(key))
    }
}

impl fmt::Debug for SqlDedupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlDedupStore")
            .field("dialect", &self.statements.dialect)
            .field("table", &self.table)
            .field("purge_interval", &self.purge_interval)
            .finish_non_exhaustive()
    }
}
