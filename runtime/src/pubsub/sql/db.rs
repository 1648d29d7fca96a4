//! The database behind a [`SqlPubSub`](super::SqlPubSub): which one ([`Dialect`]), its pool
//! ([`Pool`]), what its errors mean ([`backend_error`], [`retrying`]), and the clock that leases
//! and delays are measured by ([`now_ms`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// The database behind a [`SqlPubSub`](super::SqlPubSub).
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

impl Dialect {
    /// `sqlite`, `postgres` or `mysql`.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
        }
    }
}

/// What a row may hold beside its payload, within the database's limit on a row or a statement:
/// the topic, the id and the metadata, and the statement's own bytes.
pub(super) const ROW_ROOM: usize = 64 * 1024;

/// MySQL's `max_allowed_packet` until the server's own is read: the smallest default among the
/// supported servers (MariaDB 10.5; MySQL 8 has 64 MiB).
const MYSQL_DEFAULT_PACKET: u64 = 16 * 1024 * 1024;

impl Dialect {
    /// The largest payload this database stores and returns in one row, less [`ROW_ROOM`]:
    /// SQLite's `SQLITE_MAX_LENGTH` (1 000 000 000 bytes, a row's limit in the bundled library);
    /// PostgreSQL's 1 GiB limit on a field and on a protocol message; MySQL's `max_allowed_packet`
    /// (`packet`, as read from the server), which bounds a statement and a row.
    pub(super) fn max_payload(self, packet: Option<u64>) -> usize {
        let limit: u64 = match self {
            Dialect::Sqlite => 1_000_000_000,
            Dialect::Postgres => (1 << 30) - 1,
            Dialect::MySql => packet.unwrap_or(MYSQL_DEFAULT_PACKET),
        };
        usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(ROW_ROOM)
    }

    /// Where [`max_payload`](Self::max_payload)'s limit comes from, for error messages.
    pub(super) fn limit_source(self) -> &'static str {
        match self {
            Dialect::Sqlite => "SQLite: SQLITE_MAX_LENGTH less 64 KiB for the rest of the row",
            Dialect::Postgres => "PostgreSQL: 1 GiB per field less 64 KiB for the rest of the row",
            Dialect::MySql => "MySQL: the server's max_allowed_packet less 64 KiB for the rest of the row",
        }
    }
}

/// A pool of connections to one of the databases.
#[derive(Clone)]
pub(super) enum Pool {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
}

impl Pool {
    pub(super) fn dialect(&self) -> Dialect {
        match self {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(_) => Dialect::Sqlite,
            #[cfg(feature = "postgres")]
            Pool::Postgres(_) => Dialect::Postgres,
            #[cfg(feature = "mysql")]
            Pool::MySql(_) => Dialect::MySql,
        }
    }

    pub(super) async fn close(&self) {
        match self {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(pool) => pool.close().await,
            #[cfg(feature = "postgres")]
            Pool::Postgres(pool) => pool.close().await,
            #[cfg(feature = "mysql")]
            Pool::MySql(pool) => pool.close().await,
        }
    }
}

/// A failure of the database or of the connection to it.
pub(super) fn backend_error(error: sqlx::Error) -> Error {
    Error::backend(error)
}

/// Deadlocks and serialization failures (SQLSTATE class 40): the transaction may be retried.
pub(super) fn is_retryable(error: &Error) -> bool {
    match error.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(db)) => db.code().is_some_and(|code| code.starts_with("40")),
        _ => false,
    }
}

/// A failure that may pass if the statement is tried again: a deadlock or serialization failure,
/// or a connection that broke or could not be had (a database restart, a network cut).
pub(super) fn is_transient(error: &Error) -> bool {
    match error.downcast_ref::<sqlx::Error>() {
        Some(
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_),
        ) => true,
        Some(sqlx::Error::Database(db)) => db.code().is_some_and(|code| {
            // 40: transaction rollback (deadlock, serialization); 08: connection exception;
            // 57P0x: the server is shutting down or starting (PostgreSQL's admin shutdown);
            // 70100: the connection was killed (MariaDB).
            code.starts_with("40") || code.starts_with("08") || code.starts_with("57P0") || code == "70100"
        }),
        _ => false,
    }
}

/// How many times one operation is tried when the database reports a deadlock or a
/// serialization failure.
pub(super) const RETRY_ATTEMPTS: u32 = 8;

/// Runs `op` again (a few times) while it fails with a deadlock or serialization failure.
pub(super) async fn retrying<T, F, Fut>(op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    tries(RETRY_ATTEMPTS, is_retryable, op).await
}

/// Runs an idempotent `op` again (twice at most) when it fails for a reason that may pass, a
/// connection cut since its last use above all (see `pubsub::PING_AFTER_IDLE`): the pool closes
/// that connection when it comes back, so the next try gets another.
pub(super) async fn reconnecting<T, F, Fut>(op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    tries(3, is_transient, op).await
}

/// Runs `op` up to `limit` times, again after a pause while it fails with an error `again` accepts.
async fn tries<T, F, Fut>(limit: u32, again: fn(&Error) -> bool, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Err(error) if attempt < limit && again(&error) => backoff(attempt).await,
            result => return result,
        }
    }
}

/// The wait before another try: a few milliseconds, growing, jittered.
pub(super) async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(2 * u64::from(attempt) + fastrand::u64(0..5))).await;
}

/// Now, in milliseconds since the Unix epoch (the unit of leases and delays in the tables).
pub(super) fn now_ms() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// `duration` in milliseconds.
pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
