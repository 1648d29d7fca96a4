//! [`KeyTable`]: a table of keys that expire, in the SQL backend's database: what the
//! [`SqlDedupStore`](super::SqlDedupStore) and the [`SqlAttemptStore`](super::SqlAttemptStore)
//! share (how a key is stored, the database's clock, the schema, purging expired rows).

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::db::{backend_error, retrying, Dialect, Pool};
use super::ops::{create_tables, dispatch};
use super::queries::number_placeholders;
use crate::error::Result;

/// Rows an opportunistic purge deletes at most (a purge that deletes this many runs again at the
/// next write).
pub(super) const PURGE_BATCH: u64 = 5_000;

/// The longest window kept, about a thousand years (longer ones are cut to it): expiry times
/// stay far from overflowing.
pub(super) const MAX_TTL_MS: i64 = 1_000 * 366 * 24 * 3_600 * 1_000;

/// The SQL a dialect writes for the pieces every statement on a key table uses.
#[derive(Clone, Copy)]
pub(super) struct Sql {
    /// The database's clock in milliseconds since the Unix epoch.
    pub(super) now: &'static str,
    /// A key as stored, from its bound text (`?`).
    pub(super) key: &'static str,
}

impl Sql {
    /// The pieces for `dialect`. SQLite stores the key as is; PostgreSQL and MySQL store its
    /// SHA-256 digest (computed by the database), so keys of any length and any text fit a
    /// fixed-size primary key. The clock is the **database's** (SQLite's is the process's own),
    /// so processes sharing a PostgreSQL or MySQL database need not have synchronised clocks.
    pub(super) fn of(dialect: Dialect) -> Sql {
        match dialect {
            Dialect::Sqlite => {
                Sql { now: "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)", key: "?" }
            }
            Dialect::Postgres => Sql {
                now: "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT",
                key: "sha256(convert_to(?, 'UTF8'))",
            },
            // `UNIX_TIMESTAMP()` and `NOW(6)` both read the statement's start time; combined this
            // way, no time zone conversion is involved (`UNIX_TIMESTAMP(NOW(3))` would convert from
            // the session's zone, ambiguous in a daylight saving fall-back hour).
            Dialect::MySql => Sql {
                now: "(UNIX_TIMESTAMP() * 1000 + MICROSECOND(NOW(6)) DIV 1000)",
                key: "UNHEX(SHA2(?, 256))",
            },
        }
    }
}

/// A statement in `dialect`'s placeholders (PostgreSQL numbers them).
pub(super) fn numbered(dialect: Dialect, sql: String) -> String {
    if dialect == Dialect::Postgres {
        number_placeholders(&sql)
    } else {
        sql
    }
}

/// A table of keys that expire: `key_column` (the primary key), the `columns` given (SQL column
/// definitions, with a type per dialect) and `expires_ms`, indexed. Created on first use.
pub(super) struct KeyTable {
    pub(super) pool: Pool,
    pub(super) name: String,
    pub(super) dialect: Dialect,
    schema_lock: Option<String>,
    schema: Vec<String>,
    /// Deletes up to `PURGE_BATCH` expired rows.
    purge: String,
    created: tokio::sync::OnceCell<()>,
    pub(super) purge_interval: Option<Duration>,
    /// When the next opportunistic purge is due (`None`: at the next write).
    next_purge: Mutex<Option<Instant>>,
}

impl KeyTable {
    /// The table `name` in `pool`'s database. `columns` holds the columns between the key and
    /// the expiry, each `name TYPE ...,` with a trailing comma (or is empty); `lock_id` is the
    /// PostgreSQL advisory lock that serialises creating it.
    pub(super) fn new(pool: Pool, name: String, key_column: &str, columns: &str, lock_id: i64) -> Self {
        let dialect = pool.dialect();
        let (key_type, expires_type, options) = match dialect {
            Dialect::Sqlite => ("TEXT", "INTEGER", " WITHOUT ROWID"),
            Dialect::Postgres => ("BYTEA", "BIGINT", ""),
            Dialect::MySql => ("BINARY(32)", "BIGINT", " ENGINE=InnoDB"),
        };
        let index = format!("{name}_expires");
        let table = |extra: &str| {
            format!(
                "CREATE TABLE IF NOT EXISTS {name} ({key_column} {key_type} NOT NULL PRIMARY KEY, \
                 {columns} expires_ms {expires_type} NOT NULL{extra}){options}"
            )
        };
        let schema = if dialect == Dialect::MySql {
            // (MySQL has no `CREATE INDEX IF NOT EXISTS`: the index comes with the table.)
            vec![table(&format!(", INDEX {index} (expires_ms)"))]
        } else {
            vec![table(""), format!("CREATE INDEX IF NOT EXISTS {index} ON {name} (expires_ms)")]
        };
        let Sql { now, .. } = Sql::of(dialect);
        let purge = if dialect == Dialect::MySql {
            format!("DELETE FROM {name} WHERE expires_ms <= {now} ORDER BY expires_ms LIMIT {PURGE_BATCH}")
        } else {
            // The outer condition is checked again on a row changed meanwhile (PostgreSQL), so a
            // key renewed since the subquery read it stays.
            format!(
                "DELETE FROM {name} WHERE expires_ms <= {now} AND {key_column} IN \
                 (SELECT {key_column} FROM {name} WHERE expires_ms <= {now} LIMIT {PURGE_BATCH})"
            )
        };
        KeyTable {
            pool,
            name,
            dialect,
            schema_lock: (dialect == Dialect::Postgres)
                .then(|| format!("SELECT pg_advisory_xact_lock({lock_id})")),
            schema,
            purge,
            created: tokio::sync::OnceCell::new(),
            purge_interval: Some(Duration::from_secs(60)),
            next_purge: Mutex::new(None),
        }
    }

    /// Creates the table unless it exists (once per store).
    pub(super) async fn ensure(&self) -> Result<()> {
        self.created
            .get_or_try_init(|| create_tables(&self.pool, self.schema_lock.as_deref(), &self.schema))
            .await
            .map(|_| ())
    }

    /// Deletes every expired row now; returns how many.
    pub(super) async fn purge_expired(&self) -> Result<u64> {
        self.ensure().await?;
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
        let sql = &self.purge;
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
    pub(super) async fn purge_if_due(&self) {
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
            Err(error) => tracing::debug!(%error, table = %self.name, "purging expired keys failed"),
        }
    }

    /// Runs `sql` (binding `key`) and ignores what it affected: a delete by key.
    pub(super) async fn delete_key(&self, sql: &str, key: &str) -> Result<()> {
        self.ensure().await?;
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
