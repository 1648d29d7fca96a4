//! The statements of the SQL backend, written once and instantiated per database by `dialect!`,
//! and [`dispatch!`], which runs code against a [`Pool`](super::db::Pool) with its database's
//! statements.
//!
//! Every function here takes concrete sqlx types (one module per database), so there are no
//! generic executor bounds; the SQL text comes from [`Queries`](super::queries::Queries), built
//! per dialect.

use super::stored::StoredMessage;

/// Rows per multi-row INSERT at most (7 parameters each: far below every database's parameter
/// limit).
const INSERT_CHUNK: usize = 500;

/// What a row costs a statement beside its payload and metadata (topic, id, numbers), roughly.
const ROW_OVERHEAD: usize = 64;

/// Cuts `messages` into the rows of successive INSERTs: at most [`INSERT_CHUNK`] rows, and no more
/// than `max_bytes` unless one message alone is larger.
fn insert_chunks<'m>(
    messages: &'m [StoredMessage],
    topic: &str,
    max_bytes: usize,
) -> impl Iterator<Item = &'m [StoredMessage]> {
    let mut rest = messages;
    let per_row = topic.len() + ROW_OVERHEAD;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut len = 0;
        for message in rest.iter().take(INSERT_CHUNK) {
            bytes += message.stored_len() + per_row;
            if len > 0 && bytes > max_bytes {
                break;
            }
            len += 1;
        }
        let (chunk, tail) = rest.split_at(len);
        rest = tail;
        Some(chunk)
    })
}

/// Runs `$body` with `$pool` bound to the concrete pool and `$ops` to its dialect's statements.
macro_rules! dispatch {
    ($self:expr, ($pool:ident, $ops:ident) => $body:expr) => {
        match $self {
            #[cfg(feature = "sqlite")]
            $crate::pubsub::sql::db::Pool::Sqlite($pool) => {
                #[allow(unused_imports)]
                use $crate::pubsub::sql::ops::sqlite as $ops;
                $body
            }
            #[cfg(feature = "postgres")]
            $crate::pubsub::sql::db::Pool::Postgres($pool) => {
                #[allow(unused_imports)]
                use $crate::pubsub::sql::ops::postgres as $ops;
                $body
            }
            #[cfg(feature = "mysql")]
            $crate::pubsub::sql::db::Pool::MySql($pool) => {
                #[allow(unused_imports)]
                use $crate::pubsub::sql::ops::mysql as $ops;
                $body
            }
        }
    };
}
pub(super) use dispatch;

/// Creates the tables of a store in the backend's database: `statements` in one transaction,
/// after `lock` (PostgreSQL: an advisory lock, so that concurrent creators wait for each other
/// instead of failing on the catalog's unique keys).
pub(super) async fn create_tables(
    pool: &super::db::Pool,
    lock: Option<&str>,
    statements: &[String],
) -> crate::error::Result<()> {
    use super::db::backend_error;
    dispatch!(pool, (pool, _ops) => {
        let mut tx = pool.begin().await.map_err(backend_error)?;
        if let Some(lock) = lock {
            sqlx::query(lock).execute(&mut *tx).await.map_err(backend_error)?;
        }
        for statement in statements {
            sqlx::query(statement).execute(&mut *tx).await.map_err(backend_error)?;
        }
        tx.commit().await.map_err(backend_error)
    })
}

/// Where the messages of a publish whose outcome is unknown (the connection failed while the
/// database committed, or not) would be, if they were stored.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unknown {
    /// The first of them at this sequence number.
    At(i64),
    /// Somewhere after the topic's last sequence number this process saw stored (the one-statement
    /// publish learns its number only from the answer that did not come).
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
    After,
}

/// What a publish failed with, and whether (and where) its messages may be stored all the same.
pub(crate) type Failure = (crate::error::Error, Option<Unknown>);

/// What a publish in one round trip came to: `None` when the database or the batch cannot take
/// that path here; `Some(Ok(Some(first)))` stored from number `first`; `Some(Ok(None))` nothing
/// stored because the topic has no row yet (the transaction path creates it).
type OneTrip = Option<Result<Option<i64>, Failure>>;

/// A publish in one statement, where the database can: PostgreSQL's data-modifying `WITH`
/// reserves the numbers on the topic's row and inserts the rows from arrays, in one round trip and
/// one statement text whatever the batch's size (so one prepared statement). `None` for a batch
/// that takes more than one INSERT of `chunk_bytes`. Works inside the caller's transaction too.
#[cfg(feature = "postgres")]
async fn postgres_publish_one(
    conn: &mut sqlx::PgConnection,
    q: &super::queries::Queries,
    topic: &str,
    messages: &[StoredMessage],
    chunk_bytes: usize,
    _alone: bool,
) -> OneTrip {
    let sql = q.publish_one.as_deref()?;
    if insert_chunks(messages, topic, chunk_bytes).nth(1).is_some() {
        return None;
    }
    let count = i64::try_from(messages.len()).ok()?;
    let ids: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
    let metadata: Vec<&str> = messages.iter().map(|m| m.metadata.as_str()).collect();
    let payloads: Vec<&[u8]> = messages.iter().map(|m| &m.payload[..]).collect();
    let outcome = sqlx::query_scalar::<_, i64>(sql)
        .bind(count)
        .bind(topic)
        .bind(ids)
        .bind(metadata)
        .bind(payloads)
        .bind(super::db::now_ms())
        .fetch_optional(conn)
        .await;
    Some(outcome.map_err(|error| {
        // The server refused it (nothing stored), or the answer never came.
        let unknown = !matches!(error, sqlx::Error::Database(_));
        (super::db::backend_error(error), unknown.then_some(Unknown::After))
    }))
}

/// The most text [`mysql_publish_one`] sends: a larger message takes prepared statements (its
/// payload travels as hex in the text, twice its size).
#[cfg(feature = "mysql")]
const ONE_TRIP_TEXT: usize = 64 * 1024;

/// MySQL / MariaDB: a publish of one message in one round trip, on a connection of its own
/// (`alone`: not inside a transaction, which its `START TRANSACTION` would commit). One text of
/// four statements, which the server runs in order and stops at the first that fails: the
/// transaction, the reservation on the topic's row (locked until the commit, as on the
/// transaction path), an `INSERT ... SELECT` that takes the number from that row (no row for the
/// topic, no row), the commit. The values travel as hex literals, so no text of a message is ever
/// read as SQL whatever the server's `sql_mode`. Against BEGIN, UPDATE, INSERT and COMMIT sent one
/// after the other, it saves three round trips; prepared statements cannot do it (one statement
/// each). A batch goes the prepared way: its rows as a derived table of `UNION ALL` selects cost
/// MariaDB more than the round trips saved (0.5 x a multi-row INSERT at 100 rows).
#[cfg(feature = "mysql")]
async fn mysql_publish_one(
    conn: &mut sqlx::MySqlConnection,
    q: &super::queries::Queries,
    topic: &str,
    messages: &[StoredMessage],
    chunk_bytes: usize,
    alone: bool,
) -> OneTrip {
    let ([message], true) = (messages, alone) else { return None };
    let sql = mysql_publish_text(q, topic, message, chunk_bytes)?;
    let (results, done, error) = mysql_run_text(&mut *conn, &sql).await;
    // Statement 1 the reservation (its number: the topic's new last one), 2 the INSERT.
    let first = (done > 1 && results[1].0 == 1).then(|| i64::try_from(results[1].1).ok()).flatten();
    let inserted = if done > 2 { results[2].0 } else { 0 };
    let Some(error) = error else {
        match (done, inserted, first) {
            (4, 0, None) => return Some(Ok(None)),
            (4, 1, Some(_)) => return Some(Ok(first)),
            _ => {}
        }
        let error = crate::error::Error::new(
            crate::error::ErrorKind::Backend,
            format!(
                "a publish in one round trip came back with {done} results of 4 and {inserted} \
                 rows of 1 (number {first:?})"
            ),
        );
        return Some(Err((error, Some(first.map_or(Unknown::After, Unknown::At)))));
    };
    let refused = matches!(error, sqlx::Error::Database(_));
    if refused {
        // The server stopped at the failing statement with the transaction still open (sqlx does
        // not know of it: it came in the text): close it before the connection goes back.
        if let (_, _, Some(rollback)) = mysql_run_text(&mut *conn, "ROLLBACK").await {
            tracing::debug!(%rollback, "SQL backend: ROLLBACK after a failed publish failed");
        }
    }
    // Refused before the commit: nothing stored. Refused at the commit, or no answer (the server
    // may have run all four): unknown, at `first` if the reservation's answer came.
    let unknown = if refused && done < 3 { None } else { Some(first.map_or(Unknown::After, Unknown::At)) };
    Some(Err((super::db::backend_error(error), unknown)))
}

/// What [`mysql_run_text`] returns: the first four statements' (rows affected, last insert id),
/// how many statements answered, and the error the text stopped at.
#[cfg(feature = "mysql")]
type TextResults = ([(u64, u64); 4], usize, Option<sqlx::Error>);

/// Runs a text of statements: each one's rows affected and last insert id, how many came back,
/// and the error the server stopped at (or the connection failed with). (A boxed future with its
/// lifetimes spelled out: inferred, they are too general for `Send`.)
#[cfg(feature = "mysql")]
fn mysql_run_text<'c>(
    conn: &'c mut sqlx::MySqlConnection,
    sql: &'c str,
) -> futures_util::future::BoxFuture<'c, TextResults> {
    use futures_util::TryStreamExt as _;

    Box::pin(async move {
        let mut results = [(0, 0); 4];
        let mut done = 0;
        let mut stream = sqlx::raw_sql(sql).fetch_many(conn);
        loop {
            match stream.try_next().await {
                Ok(Some(sqlx::Either::Left(result))) => {
                    if let Some(slot) = results.get_mut(done) {
                        *slot = (result.rows_affected(), result.last_insert_id());
                    }
                    done += 1;
                }
                // (No statement sent here returns rows.)
                Ok(Some(sqlx::Either::Right(_))) => {}
                Ok(None) => return (results, done, None),
                Err(error) => return (results, done, Some(error)),
            }
        }
    })
}

/// The text of [`mysql_publish_one`], or `None` when the message is too large for it.
#[cfg(feature = "mysql")]
fn mysql_publish_text(
    q: &super::queries::Queries,
    topic: &str,
    message: &StoredMessage,
    chunk_bytes: usize,
) -> Option<String> {
    use std::fmt::Write as _;

    let estimate = 2 * (message.stored_len() + 2 * topic.len()) + 640;
    if estimate > ONE_TRIP_TEXT.min(chunk_bytes) {
        return None;
    }
    let [topics, table] = &q.tables;
    let mut sql = String::with_capacity(estimate);
    let _ = write!(
        sql,
        "START TRANSACTION;UPDATE {topics} SET last_seq = LAST_INSERT_ID(last_seq + 1) WHERE topic = "
    );
    push_text(&mut sql, topic);
    let _ = write!(
        sql,
        ";INSERT INTO {table} (topic, seq, id, metadata, payload, created_ms, size) SELECT topic, last_seq, "
    );
    push_text(&mut sql, &message.id);
    sql.push_str(", ");
    push_text(&mut sql, &message.metadata);
    sql.push_str(", ");
    push_hex(&mut sql, &message.payload);
    let _ = write!(sql, ", {}, {} FROM {topics} WHERE topic = ", super::db::now_ms(), message.payload.len());
    push_text(&mut sql, topic);
    sql.push_str(";COMMIT");
    Some(sql)
}

/// `bytes` as a MySQL hex literal (`X'6f6b'`).
#[cfg(feature = "mysql")]
fn push_hex(sql: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    sql.reserve(bytes.len() * 2 + 3);
    sql.push_str("X'");
    for byte in bytes {
        sql.push(char::from(DIGITS[usize::from(byte >> 4)]));
        sql.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    sql.push('\'');
}

/// `text` as a MySQL utf8mb4 string literal, written in hex.
#[cfg(feature = "mysql")]
fn push_text(sql: &mut String, text: &str) {
    sql.push_str("_utf8mb4 ");
    push_hex(sql, text.as_bytes());
}

/// The databases without a publish in one round trip.
#[cfg(feature = "sqlite")]
async fn no_publish_one<C>(
    _: &mut C,
    _: &super::queries::Queries,
    _: &str,
    _: &[StoredMessage],
    _: usize,
    _: bool,
) -> OneTrip {
    None
}

/// MySQL / MariaDB: the number an `UPDATE ... SET last_seq = LAST_INSERT_ID(expr)` set, which
/// the server returns with the statement's result (no `SELECT` after it).
#[cfg(feature = "mysql")]
fn mysql_last_insert_id(result: &sqlx::mysql::MySqlQueryResult) -> Option<i64> {
    i64::try_from(result.last_insert_id()).ok()
}

/// The databases that answer `UPDATE ... RETURNING` instead.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn no_last_insert_id<R>(_: &R) -> Option<i64> {
    None
}

macro_rules! dialect {
    ($module:ident, $db:ty, $conn:ty, $pool:ty, $publish_one:path, $last_insert_id:path) => {
        pub(super) mod $module {
            use sqlx::{Connection, Row as _};

            use crate::error::Result;
            use crate::message::Message;
            use crate::pubsub::sql::db::{backend_error, now_ms};
            use crate::pubsub::sql::ops::{insert_chunks, Failure, Unknown};
            use crate::pubsub::sql::queries::Queries;
            use crate::pubsub::sql::stored::{
                decode_head, IntoPayload, Row, StoredMessage, ID, METADATA, SEQ,
            };

            /// Creates the tables and indexes if they do not exist (and adds MySQL's `size` column to
            /// a `messages` table made before it).
            pub(crate) async fn create_schema(pool: &$pool, q: &Queries) -> Result<()> {
                let mut conn = pool.acquire().await.map_err(backend_error)?;
                let mut tx = Connection::begin(&mut *conn).await.map_err(backend_error)?;
                if let Some(lock) = &q.schema_lock {
                    sqlx::query(lock).execute(&mut *tx).await.map_err(backend_error)?;
                }
                for statement in &q.schema {
                    sqlx::query(statement).execute(&mut *tx).await.map_err(backend_error)?;
                }
                tx.commit().await.map_err(backend_error)?;
                if let Some([exists, add]) = &q.size_column {
                    // Looked up first: an ALTER waits for every open transaction on the table.
                    let found: i64 = sqlx::query_scalar(exists)
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(backend_error)?;
                    if found == 0 {
                        if let Err(error) = sqlx::query(add).execute(&mut *conn).await {
                            // Another process may have added it meanwhile (duplicate column name).
                            let raced = matches!(&error, sqlx::Error::Database(db)
                                if db.code().as_deref() == Some("42S21"));
                            if !raced {
                                return Err(backend_error(error));
                            }
                        }
                    }
                }
                Ok(())
            }

            /// The server's limit on a statement or a row in bytes, where it has one lower than
            /// its field limits (MySQL's `max_allowed_packet`).
            pub(crate) async fn packet_limit(pool: &$pool, q: &Queries) -> Result<Option<u64>> {
                let Some(query) = &q.packet_limit else { return Ok(None) };
                let limit: i64 = sqlx::query_scalar(query).fetch_one(pool).await.map_err(backend_error)?;
                Ok(Some(u64::try_from(limit).unwrap_or(0)))
            }

            /// Publishes `messages` to `topic` on `conn` atomically: reserves their sequence numbers
            /// on the topic's row (which stays locked until the outermost transaction commits, so
            /// sequence numbers become visible in order), then inserts them. PostgreSQL does both in
            /// one statement (on its own, or inside the caller's transaction); the others in a
            /// transaction (a savepoint when `conn` is already in one).
            pub(crate) async fn publish(
                conn: &mut $conn,
                q: &Queries,
                topic: &str,
                messages: &[StoredMessage],
                chunk_bytes: usize,
            ) -> Result<()> {
                publish_committing(conn, q, topic, messages, chunk_bytes, false)
                    .await
                    .map(drop)
                    .map_err(|(error, _)| error)
            }

            /// [`publish`], returning the last sequence number stored; a failure also says
            /// whether its outcome is unknown (a failure at the commit, or of the connection
            /// during the one round trip), and where the messages would be. `alone`: `conn` is
            /// in no transaction (MySQL then publishes in one round trip).
            pub(crate) async fn publish_committing(
                conn: &mut $conn,
                q: &Queries,
                topic: &str,
                messages: &[StoredMessage],
                chunk_bytes: usize,
                alone: bool,
            ) -> std::result::Result<i64, Failure> {
                let Some(last) = messages.len().checked_sub(1) else {
                    return Ok(0);
                };
                let last = last as i64;
                match $publish_one(&mut *conn, q, topic, messages, chunk_bytes, alone).await {
                    Some(Ok(Some(first))) => return Ok(first + last),
                    // No row for the topic yet: the transaction below creates it.
                    None | Some(Ok(None)) => {}
                    Some(Err(failure)) => return Err(failure),
                }
                let mut tx = Connection::begin(&mut *conn).await.map_err(|e| (backend_error(e), None))?;
                let first = write_batch(&mut *tx, q, topic, messages, chunk_bytes).await.map_err(|e| (e, None))?;
                tx.commit().await.map_err(|e| (backend_error(e), Some(Unknown::At(first))))?;
                Ok(first + last)
            }

            /// The id of a message `id` stored in `topic` after `seq`, if any (after a one-statement
            /// publish whose outcome is unknown).
            pub(crate) async fn stored_after(
                pool: &$pool,
                q: &Queries,
                topic: &str,
                seq: i64,
                id: &str,
            ) -> Result<Option<String>> {
                sqlx::query_scalar(&q.stored_after)
                    .bind(topic)
                    .bind(seq)
                    .bind(id)
                    .fetch_optional(pool)
                    .await
                    .map_err(backend_error)
            }

            /// The id of the message stored at `seq` in `topic`, if any.
            pub(crate) async fn stored_id(pool: &$pool, q: &Queries, topic: &str, seq: i64) -> Result<Option<String>> {
                sqlx::query_scalar(&q.stored_id)
                    .bind(topic)
                    .bind(seq)
                    .fetch_optional(pool)
                    .await
                    .map_err(backend_error)
            }

            /// Reserves the batch's sequence numbers and inserts it; returns the first number.
            async fn write_batch(
                tx: &mut $conn,
                q: &Queries,
                topic: &str,
                messages: &[StoredMessage],
                chunk_bytes: usize,
            ) -> Result<i64> {
                let count = i64::try_from(messages.len()).expect("batch size fits i64");
                let mut last = None;
                for _ in 0..2 {
                    last = if q.mysql {
                        // `LAST_INSERT_ID(last_seq + ?)`: the new number comes back with the
                        // statement's result.
                        let result = sqlx::query(&q.reserve)
                            .bind(count)
                            .bind(topic)
                            .execute(&mut *tx)
                            .await
                            .map_err(backend_error)?;
                        if result.rows_affected() == 0 {
                            None
                        } else {
                            Some($last_insert_id(&result).ok_or_else(|| {
                                crate::error::Error::new(
                                    crate::error::ErrorKind::Backend,
                                    "the topic's sequence number did not come back",
                                )
                            })?)
                        }
                    } else {
                        let row = sqlx::query(&q.reserve)
                            .bind(count)
                            .bind(topic)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(backend_error)?;
                        row.map(|r| r.try_get::<i64, _>(0)).transpose().map_err(backend_error)?
                    };
                    if last.is_some() {
                        break;
                    }
                    // First message on this topic: create its row, then reserve again.
                    sqlx::query(&q.create_topic)
                        .bind(topic)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend_error)?;
                }
                let last = last.ok_or_else(|| {
                    crate::error::Error::new(
                        crate::error::ErrorKind::Backend,
                        "could not reserve sequence numbers",
                    )
                })?;
                let first = last - count + 1;
                let created = now_ms();
                let mut base = first;
                for chunk in insert_chunks(messages, topic, chunk_bytes) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(&q.insert_prefix);
                    insert.push_values(chunk.iter().enumerate(), |mut row, (offset, message)| {
                        row.push_bind(topic)
                            .push_bind(base + offset as i64)
                            .push_bind(message.id.as_str())
                            .push_bind(message.metadata.as_str())
                            .push_bind(&message.payload[..])
                            .push_bind(created);
                        if q.mysql {
                            row.push_bind(message.payload.len() as i64);
                        }
                    });
                    insert.build().execute(&mut *tx).await.map_err(backend_error)?;
                    base += chunk.len() as i64;
                }
                Ok(first)
            }

            /// Creates `group` on `topic` unless it exists: a named group starts at the topic's
            /// beginning, a private one (`start_at_end`) after its current last message.
            pub(crate) async fn create_group(
                pool: &$pool,
                q: &Queries,
                topic: &str,
                group: &str,
                start_at_end: bool,
            ) -> Result<()> {
                sqlx::query(&q.create_group)
                    .bind(topic)
                    .bind(group)
                    .bind(start_at_end)
                    .bind(topic)
                    .execute(pool)
                    .await
                    .map_err(backend_error)?;
                Ok(())
            }

            /// Takes the group's lease for `owner` if it is free (or expired, or already ours, or
            /// held by an earlier incarnation of our consumer: `owner` is `{consumer}@{incarnation}/..`)
            /// and there is something to read; returns (acked, head attempts, up to `batch` rows, and
            /// up to `batch_bytes` of payload unless the first row alone is larger).
            #[allow(clippy::too_many_arguments)]
            pub(crate) async fn claim(
                pool: &$pool,
                q: &Queries,
                topic: &str,
                group: &str,
                owner: &str,
                now: i64,
                lease_until: i64,
                batch: i64,
                batch_bytes: i64,
            ) -> Result<Option<(i64, i64, Vec<Row>)>> {
                // `{consumer}@` and `{consumer}@{incarnation}/`, the prefixes of `owner`.
                // (An owner without them takes over nothing that is not its own.)
                let consumer = owner.find('@').map_or(owner, |at| &owner[..=at]);
                let incarnation = owner.find('/').map_or(owner, |slash| &owner[..=slash]);
                let (consumer_len, incarnation_len) =
                    (consumer.chars().count() as i64, incarnation.chars().count() as i64);
                macro_rules! claim_query {
                    () => {
                        sqlx::query(&q.claim)
                            .bind(owner)
                            .bind(lease_until)
                            .bind(topic)
                            .bind(group)
                            .bind(owner)
                            .bind(now)
                            .bind(consumer_len)
                            .bind(consumer)
                            .bind(incarnation_len)
                            .bind(incarnation)
                            .bind(now)
                            .bind(topic)
                    };
                }
                let claimed = if q.mysql {
                    // No RETURNING: the claim, then a read of the group's row. Not in one
                    // transaction: a claim dropped half-way (a `select!` that took another
                    // branch) would leave it open on a pooled connection, holding the group's row
                    // locked until that connection is used again. Once the lease is ours, nobody
                    // else moves `acked` or the attempts, so the read after it is exact.
                    let updated = claim_query!().execute(pool).await.map_err(backend_error)?.rows_affected();
                    if updated == 0 {
                        None
                    } else {
                        let row = sqlx::query(&q.group_state)
                            .bind(topic)
                            .bind(group)
                            .fetch_one(pool)
                            .await
                            .map_err(backend_error)?;
                        Some((row.try_get(0).map_err(backend_error)?, row.try_get(1).map_err(backend_error)?))
                    }
                } else {
                    match claim_query!().fetch_optional(pool).await.map_err(backend_error)? {
                        Some(row) => Some((
                            row.try_get(0).map_err(backend_error)?,
                            row.try_get(1).map_err(backend_error)?,
                        )),
                        None => None,
                    }
                };
                let Some((acked, attempts)) = claimed else { return Ok(None) };
                // The two forms of `read` take their binds in different orders (see `Queries`).
                let read = sqlx::query(&q.read).bind(topic).bind(acked);
                let read = if q.mysql {
                    read.bind(batch).bind(batch_bytes).bind(topic)
                } else {
                    read.bind(topic).bind(acked).bind(batch).bind(batch_bytes)
                };
                let mut read = read.fetch(pool);
                let mut rows = Vec::new();
                // Each row becomes a message as it arrives (then only its payload is kept).
                while let Some(row) = futures_util::TryStreamExt::try_next(&mut read).await.map_err(backend_error)? {
                    let seq: i64 = row.try_get(SEQ).map_err(backend_error)?;
                    let id: &str = row.try_get(ID).map_err(backend_error)?;
                    let metadata: &str = row.try_get(METADATA).map_err(backend_error)?;
                    let (id, metadata) = decode_head(id, metadata);
                    let payload = row.into_payload().map_err(backend_error)?;
                    rows.push((seq, Message::from_parts(id, metadata, payload)));
                }
                Ok(Some((acked, attempts, rows)))
            }

            /// Whether `group` has anything after its `acked` (a read, where a claim writes); with
            /// `stuck_before`, only if its lease holder let the lease run out before that time.
            pub(crate) async fn waiting(
                pool: &$pool,
                q: &Queries,
                topic: &str,
                group: &str,
                stuck_before: Option<i64>,
            ) -> Result<bool> {
                let count: i64 = sqlx::query_scalar(&q.waiting)
                    .bind(topic)
                    .bind(group)
                    .bind(stuck_before.is_none())
                    .bind(stuck_before.unwrap_or(0))
                    .bind(topic)
                    .fetch_one(pool)
                    .await
                    .map_err(backend_error)?;
                Ok(count > 0)
            }

            /// Moves the group from `prev` to `seq` if `owner` still holds it; `new_owner` is
            /// `None` to release the lease at the same time. Returns whether it did.
            #[allow(clippy::too_many_arguments)]
            pub(crate) async fn ack(
                pool: &$pool,
                q: &Queries,
                topic: &str,
                group: &str,
                owner: &str,
                new_owner: Option<&str>,
                seq: i64,
                prev: i64,
                head_attempts: i64,
                lease_until: i64,
            ) -> Result<bool> {
                let done = sqlx::query(&q.ack)
                    .bind(seq)
                    .bind(head_attempts)
                    .bind(lease_until)
                    .bind(new_owner)
                    .bind(topic)
                    .bind(group)
                    .bind(owner)
                    .bind(prev)
                    .execute(pool)
                    .await
                    .map_err(backend_error)?;
                Ok(done.rows_affected() == 1)
            }

            /// Gives the head message back: releases the lease, and nobody claims the group
            /// before `not_before`. Returns whether `owner` still held it.
            #[allow(clippy::too_many_arguments)]
            pub(crate) async fn nack(
                pool: &$pool,
                q: &Queries,
                topic: &str,
                group: &str,
                owner: &str,
                prev: i64,
                not_before: i64,
                uncount: bool,
            ) -> Result<bool> {
                let done = sqlx::query(&q.nack)
                    .bind(not_before)
                    .bind(i64::from(uncount))
                    .bind(topic)
                    .bind(group)
                    .bind(owner)
                    .bind(prev)
                    .execute(pool)
                    .await
                    .map_err(backend_error)?;
                Ok(done.rows_affected() == 1)
            }

            /// Renews `owner`'s lease of the group while the message after `prev` is in flight;
            /// whether it still held it.
            pub(crate) async fn renew(
                pool: &$pool,
                q: &Queries,
                topic: &str,
                group: &str,
                owner: &str,
                prev: i64,
                lease_until: i64,
            ) -> Result<bool> {
                let done = sqlx::query(&q.renew)
                    .bind(lease_until)
                    .bind(topic)
                    .bind(group)
                    .bind(owner)
                    .bind(prev)
                    .execute(pool)
                    .await
                    .map_err(backend_error)?;
                Ok(done.rows_affected() == 1)
            }

            /// Releases `owner`'s lease, setting the head's attempt count.
            pub(crate) async fn release(
                pool: &$pool,
                q: &Queries,
                topic: &str,
                group: &str,
                owner: &str,
                head_attempts: i64,
            ) -> Result<()> {
                sqlx::query(&q.release)
                    .bind(head_attempts)
                    .bind(topic)
                    .bind(group)
                    .bind(owner)
                    .execute(pool)
                    .await
                    .map_err(backend_error)?;
                Ok(())
            }

            /// Creates the topic's row unless it exists (a statement of its own).
            pub(crate) async fn create_topic(pool: &$pool, q: &Queries, topic: &str) -> Result<()> {
                sqlx::query(&q.create_topic).bind(topic).execute(pool).await.map_err(backend_error)?;
                Ok(())
            }

            /// The group's `acked`, if the group exists.
            pub(crate) async fn acked(pool: &$pool, q: &Queries, topic: &str, group: &str) -> Result<Option<i64>> {
                let row = sqlx::query(&q.group_state)
                    .bind(topic)
                    .bind(group)
                    .fetch_optional(pool)
                    .await
                    .map_err(backend_error)?;
                row.map(|row| row.try_get::<i64, _>(0)).transpose().map_err(backend_error)
            }

            /// Every topic with a row.
            pub(crate) async fn all_topics(pool: &$pool, q: &Queries) -> Result<Vec<String>> {
                let rows = sqlx::query(&q.all_topics).fetch_all(pool).await.map_err(backend_error)?;
                rows.iter().map(|row| row.try_get::<String, _>(0).map_err(backend_error)).collect()
            }

            /// Deletes, `batch` sequence numbers at a time, the messages of `topic` that every group
            /// has acked and that were published before `before` (ms); how many it deleted. Stops
            /// at the first range with nothing to delete (the rest is newer).
            pub(crate) async fn trim(
                pool: &$pool,
                q: &Queries,
                topic: &str,
                before: i64,
                batch: i64,
            ) -> Result<u64> {
                let bound: i64 = sqlx::query_scalar(&q.retention_bound)
                    .bind(topic)
                    .bind(topic)
                    .fetch_one(pool)
                    .await
                    .map_err(backend_error)?;
                let mut start: i64 =
                    sqlx::query_scalar(&q.first_seq).bind(topic).fetch_one(pool).await.map_err(backend_error)?;
                let mut deleted = 0;
                while start > 0 && start <= bound {
                    let end = start.saturating_add(batch).min(bound.saturating_add(1));
                    let done = sqlx::query(&q.trim)
                        .bind(topic)
                        .bind(start)
                        .bind(end)
                        .bind(bound)
                        .bind(before)
                        .execute(pool)
                        .await
                        .map_err(backend_error)?
                        .rows_affected();
                    if done == 0 {
                        break;
                    }
                    deleted += done;
                    start = end;
                }
                Ok(deleted)
            }

            /// Deletes a topic: its messages, its groups and its sequence.
            pub(crate) async fn delete_topic(pool: &$pool, q: &Queries, topic: &str) -> Result<()> {
                for statement in &q.delete_topic {
                    sqlx::query(statement).bind(topic).execute(pool).await.map_err(backend_error)?;
                }
                Ok(())
            }

            /// `topic`'s recorded partition count, and its own last sequence number (a topic
            /// used unpartitioned has one).
            pub(crate) async fn layout(pool: &$pool, q: &Queries, topic: &str) -> Result<(Option<i64>, Option<i64>)> {
                let row = sqlx::query(&q.layout).bind(topic).bind(topic).fetch_one(pool).await.map_err(backend_error)?;
                let parts: Option<i64> = row.try_get(0).map_err(backend_error)?;
                let last_seq: Option<i64> = row.try_get(1).map_err(backend_error)?;
                Ok((parts, last_seq))
            }

            /// Records `topic`'s partition count unless one is recorded already.
            pub(crate) async fn record_partitions<'e, E: sqlx::Executor<'e, Database = $db>>(
                on: E,
                q: &Queries,
                topic: &str,
                parts: i64,
            ) -> Result<()> {
                sqlx::query(&q.record_partitions)
                    .bind(topic)
                    .bind(parts)
                    .execute(on)
                    .await
                    .map_err(backend_error)?;
                Ok(())
            }

            /// Says `owner`, a subscription of a partitioned group, is alive until `alive_until`
            /// (ms); forgets members that are not any more (`now`); returns the live members.
            pub(crate) async fn member_beat(
                pool: &$pool,
                q: &Queries,
                topic: &str,
                group: &str,
                owner: &str,
                now: i64,
                alive_until: i64,
            ) -> Result<Vec<String>> {
                sqlx::query(&q.member_beat)
                    .bind(topic)
                    .bind(group)
                    .bind(owner)
                    .bind(alive_until)
                    .execute(pool)
                    .await
                    .map_err(backend_error)?;
                sqlx::query(&q.members_expire)
                    .bind(topic)
                    .bind(group)
                    .bind(now)
                    .execute(pool)
                    .await
                    .map_err(backend_error)?;
                let rows = sqlx::query(&q.members)
                    .bind(topic)
                    .bind(group)
                    .bind(now)
                    .fetch_all(pool)
                    .await
                    .map_err(backend_error)?;
                rows.iter().map(|row| row.try_get::<String, _>(0).map_err(backend_error)).collect()
            }

            /// `owner` leaves its partitioned group.
            pub(crate) async fn member_leave(pool: &$pool, q: &Queries, topic: &str, group: &str, owner: &str) -> Result<()> {
                sqlx::query(&q.member_leave)
                    .bind(topic)
                    .bind(group)
                    .bind(owner)
                    .execute(pool)
                    .await
                    .map_err(backend_error)?;
                Ok(())
            }

            /// Deletes a (private) group.
            pub(crate) async fn delete_group(
                pool: &$pool,
                q: &Queries,
                topic: &str,
                group: &str,
            ) -> Result<()> {
                sqlx::query(&q.delete_group)
                    .bind(topic)
                    .bind(group)
                    .execute(pool)
                    .await
                    .map_err(backend_error)?;
                Ok(())
            }
        }
    };
}

#[cfg(feature = "mysql")]
dialect!(
    mysql,
    sqlx::MySql,
    sqlx::MySqlConnection,
    sqlx::MySqlPool,
    super::mysql_publish_one,
    super::mysql_last_insert_id
);
#[cfg(feature = "postgres")]
dialect!(
    postgres,
    sqlx::Postgres,
    sqlx::PgConnection,
    sqlx::PgPool,
    super::postgres_publish_one,
    super::no_last_insert_id
);
#[cfg(feature = "sqlite")]
dialect!(
    sqlite,
    sqlx::Sqlite,
    sqlx::SqliteConnection,
    sqlx::SqlitePool,
    super::no_publish_one,
    super::no_last_insert_id
);
