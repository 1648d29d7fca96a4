//! [`SqlDedupStore`]: a [`DedupStore`] in a table of the SQL backend's database, so the
//! [`Deduplicator`](crate::middleware::Deduplicator)s of several processes share their keys.

use std::fmt;
use std::time::Duration;

use super::config::SqlConfig;
use super::db::{backend_error, backoff, is_retryable, millis, retrying, Dialect, RETRY_ATTEMPTS};
use super::keyed::{numbered, KeyTable, Sql, MAX_TTL_MS};
use super::ops::dispatch;
use super::pubsub::SqlPubSub;
use crate::error::{Error, ErrorKind, Result};
use crate::pubsub::OpFuture;
use crate::store::DedupStore;

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
    table: KeyTable,
    statements: Statements,
}

/// The SQL text for one dialect and table.
struct Statements {
    /// PostgreSQL, SQLite: an upsert returning a row iff the key was new (or expired). MySQL: an
    /// `INSERT IGNORE`, affecting a row iff the key was absent.
    insert: String,
    /// MySQL: deletes the key's row if it expired (binds the key).
    delete_expired: String,
    remove: String,
}

impl Statements {
    fn new(dialect: Dialect, table: &str) -> Statements {
        let Sql { now, key } = Sql::of(dialect);
        let insert = if dialect == Dialect::MySql {
            format!("INSERT IGNORE INTO {table} (dedup_key, expires_ms) VALUES ({key}, {now} + ?)")
        } else {
            // The update only happens to an expired row, so a live key keeps its expiry; the row
            // comes back only when inserted or updated.
            format!(
                "INSERT INTO {table} (dedup_key, expires_ms) VALUES ({key}, {now} + ?) \
                 ON CONFLICT (dedup_key) DO UPDATE SET expires_ms = excluded.expires_ms \
                 WHERE {table}.expires_ms <= {now} RETURNING 1"
            )
        };
        Statements {
            insert: numbered(dialect, insert),
            delete_expired: numbered(
                dialect,
                format!("DELETE FROM {table} WHERE dedup_key = {key} AND expires_ms <= {now}"),
            ),
            remove: numbered(dialect, format!("DELETE FROM {table} WHERE dedup_key = {key}")),
        }
    }
}

impl SqlDedupStore {
    /// A store in `pubsub`'s database, sharing its pool and table prefix.
    pub fn new(pubsub: &SqlPubSub) -> Self {
        let pool = pubsub.inner.pool.clone();
        let name = format!("{}dedup", pubsub.inner.config.table_prefix);
        let statements = Statements::new(pool.dialect(), &name);
        SqlDedupStore { table: KeyTable::new(pool, name, "dedup_key", "", 7305418842461218), statements }
    }

    /// Connects to `url` like [`SqlPubSub::connect`] (`sqlite:...`, `postgres://...`,
    /// `mysql://...` / `mariadb://...`), using `config`'s table prefix and pool size.
    pub async fn connect(url: &str, config: SqlConfig) -> Result<Self> {
        Ok(Self::new(&SqlPubSub::connect(url, config).await?))
    }

    /// How often an insert also purges expired rows (`None`: never; call
    /// [`purge_expired`](Self::purge_expired) yourself). Default one minute.
    pub fn purge_interval(mut self, interval: Option<Duration>) -> Self {
        self.table.purge_interval = interval;
        self
    }

    /// The database.
    pub fn dialect(&self) -> Dialect {
        self.table.dialect
    }

    /// The table's name (`{prefix}dedup`).
    pub fn table(&self) -> &str {
        &self.table.name
    }

    /// Creates the table now rather than on first use (idempotent).
    pub async fn ensure_schema(&self) -> Result<()> {
        self.table.ensure().await
    }

    /// Deletes every expired row now; returns how many.
    pub async fn purge_expired(&self) -> Result<u64> {
        self.table.purge_expired().await
    }

    async fn insert(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.table.ensure().await?;
        let ttl = millis(ttl).min(MAX_TTL_MS);
        let fresh = if self.table.dialect == Dialect::MySql {
            self.insert_mysql(key, ttl).await?
        } else {
            let sql = &self.statements.insert;
            retrying(|| async {
                dispatch!(&self.table.pool, (pool, _ops) => sqlx::query(sql)
                    .bind(key)
                    .bind(ttl)
                    .fetch_optional(pool)
                    .await
                    .map(|row| row.is_some())
                    .map_err(backend_error))
            })
            .await?
        };
        self.table.purge_if_due().await;
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
            let step: Result<Option<bool>> = dispatch!(&self.table.pool, (pool, _ops) => {
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
        self.table.delete_key(&self.statements.remove, key).await
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
            .field("dialect", &self.table.dialect)
            .field("table", &self.table.name)
            .field("purge_interval", &self.table.purge_interval)
            .finish_non_exhaustive()
    }
}
