//! [`SqlAttemptStore`]: an [`AttemptStore`] in a table of the SQL backend's database, so the
//! [`CountAttempts`](crate::middleware::CountAttempts) layers of several processes count the
//! deliveries of all of them.

use std::fmt;
use std::time::Duration;

use super::config::SqlConfig;
use super::db::{backend_error, millis, retrying, Dialect};
use super::keyed::{numbered, KeyTable, Sql, MAX_TTL_MS};
use super::ops::dispatch;
use super::pubsub::SqlPubSub;
use crate::error::Result;
use crate::pubsub::OpFuture;
use crate::store::AttemptStore;

/// An [`AttemptStore`] in the database of a [`SqlPubSub`] (SQLite, PostgreSQL, MySQL /
/// MariaDB): the [`CountAttempts`](crate::middleware::CountAttempts) layers of every process
/// using the same database and table prefix count the same deliveries, and the counts survive
/// the processes' restarts.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use millstream::middleware::{CountAttempts, RedeliveryCap};
/// # use millstream::pubsub::sql::{SqlAttemptStore, SqlConfig, SqlPubSub};
/// # async fn f() -> millstream::Result<()> {
/// let db = SqlPubSub::connect("postgres://app@db/app", SqlConfig::default()).await?;
/// let app = millstream::App::new()
///     .layer(CountAttempts::new(Arc::new(SqlAttemptStore::new(&db))))
///     .layer(RedeliveryCap::new(5));
/// # let _ = app;
/// # Ok(()) }
/// ```
///
/// # Table
/// One table, `{prefix}attempts` ([`SqlConfig::table_prefix`], default `millstream_attempts`),
/// created on first use (or by [`ensure_schema`](Self::ensure_schema)): one row per key with its
/// count of deliveries and its expiry time in milliseconds since the Unix epoch (indexed), read
/// from the **database's** clock. SQLite stores the key as is; PostgreSQL and MySQL its SHA-256
/// digest.
///
/// # Atomicity
/// [`record`](AttemptStore::record) is one upsert that returns the new count (PostgreSQL,
/// SQLite), or an upsert and a read of the row in one transaction (MySQL): concurrent records of
/// one key, from any process, each count once. An expired row counts as absent (its count starts
/// again at 1).
///
/// # Purging
/// As the [`SqlDedupStore`](super::SqlDedupStore)'s: at most once per
/// [`purge_interval`](Self::purge_interval) (default one minute), a record also deletes a bounded
/// batch of expired rows; [`purge_expired`](Self::purge_expired) deletes all of them.
pub struct SqlAttemptStore {
    table: KeyTable,
    /// Counts a delivery (binds the key and the ttl in milliseconds); PostgreSQL and SQLite
    /// return the count.
    record: String,
    /// MySQL: reads the count back (binds the key).
    read: String,
    forget: String,
}

impl SqlAttemptStore {
    /// A store in `pubsub`'s database, sharing its pool and table prefix.
    pub fn new(pubsub: &SqlPubSub) -> Self {
        let pool = pubsub.inner.pool.clone();
        let dialect = pool.dialect();
        let name = format!("{}attempts", pubsub.inner.config.table_prefix);
        let Sql { now, key } = Sql::of(dialect);
        let record = if dialect == Dialect::MySql {
            // Assignments run left to right: the count reads the row's expiry before it moves.
            format!(
                "INSERT INTO {name} (attempt_key, deliveries, expires_ms) VALUES ({key}, 1, {now} + ?) \
                 ON DUPLICATE KEY UPDATE deliveries = IF(expires_ms <= {now}, 1, deliveries + 1), \
                 expires_ms = VALUES(expires_ms)"
            )
        } else {
            format!(
                "INSERT INTO {name} (attempt_key, deliveries, expires_ms) VALUES ({key}, 1, {now} + ?) \
                 ON CONFLICT (attempt_key) DO UPDATE SET deliveries = CASE WHEN {name}.expires_ms <= {now} \
                 THEN 1 ELSE {name}.deliveries + 1 END, expires_ms = excluded.expires_ms RETURNING deliveries"
            )
        };
        let read = format!("SELECT deliveries FROM {name} WHERE attempt_key = {key}");
        let forget = numbered(dialect, format!("DELETE FROM {name} WHERE attempt_key = {key}"));
        let deliveries = if dialect == Dialect::Sqlite { "INTEGER" } else { "BIGINT" };
        let columns = format!("deliveries {deliveries} NOT NULL,");
        SqlAttemptStore {
            table: KeyTable::new(pool, name, "attempt_key", &columns, 7305418842461219),
            record: numbered(dialect, record),
            read,
            forget,
        }
    }

    /// Connects to `url` like [`SqlPubSub::connect`] (`sqlite:...`, `postgres://...`,
    /// `mysql://...` / `mariadb://...`), using `config`'s table prefix and pool size.
    pub async fn connect(url: &str, config: SqlConfig) -> Result<Self> {
        Ok(Self::new(&SqlPubSub::connect(url, config).await?))
    }

    /// How often a record also purges expired rows (`None`: never; call
    /// [`purge_expired`](Self::purge_expired) yourself). Default one minute.
    pub fn purge_interval(mut self, interval: Option<Duration>) -> Self {
        self.table.purge_interval = interval;
        self
    }

    /// The database.
    pub fn dialect(&self) -> Dialect {
        self.table.dialect
    }

    /// The table's name (`{prefix}attempts`).
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

    async fn count(&self, key: &str, ttl: Duration) -> Result<u32> {
        self.table.ensure().await?;
        let ttl = millis(ttl).min(MAX_TTL_MS);
        let (record, read) = (&self.record, &self.read);
        let mysql = self.table.dialect == Dialect::MySql;
        let count: i64 = retrying(|| async {
            dispatch!(&self.table.pool, (pool, _ops) => {
                if mysql {
                    let mut tx = pool.begin().await.map_err(backend_error)?;
                    sqlx::query(record).bind(key).bind(ttl).execute(&mut *tx).await.map_err(backend_error)?;
                    let count: i64 =
                        sqlx::query_scalar(read).bind(key).fetch_one(&mut *tx).await.map_err(backend_error)?;
                    tx.commit().await.map_err(backend_error)?;
                    Ok(count)
                } else {
                    sqlx::query_scalar(record).bind(key).bind(ttl).fetch_one(pool).await.map_err(backend_error)
                }
            })
        })
        .await?;
        self.table.purge_if_due().await;
        Ok(u32::try_from(count.max(1)).unwrap_or(u32::MAX))
    }
}

impl AttemptStore for SqlAttemptStore {
    fn record<'a>(&'a self, key: &'a str, ttl: Duration) -> OpFuture<'a, u32> {
        OpFuture::boxed(self.count(key, ttl))
    }

    fn forget<'a>(&'a self, key: &'a str) -> OpFuture<'a> {
        OpFuture::boxed(self.table.delete_key(&self.forget, key))
    }
}

impl fmt::Debug for SqlAttemptStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlAttemptStore")
            .field("dialect", &self.table.dialect)
            .field("table", &self.table.name)
            .field("purge_interval", &self.table.purge_interval)
            .finish_non_exhaustive()
    }
}
