//! The statements of the SQL backend, written once and instantiated per database by `dialect!`.
//!
//! Every function here takes concrete sqlx types (one module per database), so there are no
//! generic executor bounds; the SQL text comes from [`Queries`](super::Queries), built per dialect.

/// One claimed message row: (seq, id, metadata JSON, payload).
pub(super) type Row = (i64, String, String, Vec<u8>);

/// Rows per multi-row INSERT (6 parameters each: far below every database's parameter limit).
pub(super) const INSERT_CHUNK: usize = 500;

macro_rules! dialect {
    ($module:ident, $db:ty, $conn:ty, $pool:ty) => {
        pub(super) mod $module {
            use sqlx::{Connection, Row as _};

            use super::super::{backend_error, now_ms, Queries, StoredMessage};
            use super::{Row, INSERT_CHUNK};
            use crate::error::Result;

            /// Creates the tables and indexes if they do not exist.
            pub(crate) async fn create_schema(pool: &$pool, q: &Queries) -> Result<()> {
                let mut conn = pool.acquire().await.map_err(backend_error)?;
                let mut tx = Connection::begin(&mut *conn).await.map_err(backend_error)?;
                if let Some(lock) = &q.schema_lock {
                    sqlx::query(lock).execute(&mut *tx).await.map_err(backend_error)?;
                }
                for statement in &q.schema {
                    sqlx::query(statement).execute(&mut *tx).await.map_err(backend_error)?;
                }
                tx.commit().await.map_err(backend_error)
            }

            /// Publishes `messages` to `topic` on `conn`, inside a transaction (a savepoint when
            /// `conn` is already in one): reserves their sequence numbers on the topic's row (which
            /// stays locked until the outermost transaction commits, so sequence numbers become
            /// visible in order), then inserts them.
            pub(crate) async fn publish(
                conn: &mut $conn,
                q: &Queries,
                topic: &str,
                messages: &[StoredMessage],
            ) -> Result<()> {
                if messages.is_empty() {
                    return Ok(());
                }
                let count = i64::try_from(messages.len()).expect("batch size fits i64");
                let mut tx = Connection::begin(&mut *conn).await.map_err(backend_error)?;
                let mut last = None;
                for _ in 0..2 {
                    last = if q.mysql {
                        let updated = sqlx::query(&q.reserve)
                            .bind(count)
                            .bind(topic)
                            .execute(&mut *tx)
                            .await
                            .map_err(backend_error)?
                            .rows_affected();
                        if updated == 0 {
                            None
                        } else {
                            let row = sqlx::query(&q.last_seq)
                                .bind(topic)
                                .fetch_one(&mut *tx)
                                .await
                                .map_err(backend_error)?;
                            Some(row.try_get::<i64, _>(0).map_err(backend_error)?)
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
                for (index, chunk) in messages.chunks(INSERT_CHUNK).enumerate() {
                    let base = first + (index * INSERT_CHUNK) as i64;
                    let mut insert = sqlx::QueryBuilder::<$db>::new(&q.insert_prefix);
                    insert.push_values(chunk.iter().enumerate(), |mut row, (offset, message)| {
                        row.push_bind(topic)
                            .push_bind(base + offset as i64)
                            .push_bind(message.id.as_str())
                            .push_bind(message.metadata.as_str())
                            .push_bind(&message.payload[..])
                            .push_bind(created);
                    });
                    insert.build().execute(&mut *tx).await.map_err(backend_error)?;
                }
                tx.commit().await.map_err(backend_error)
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

            /// Takes the group's lease for `owner` if it is free (or expired, or already ours) and
            /// there is something to read; returns (acked, head attempts, up to `batch` rows).
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
            ) -> Result<Option<(i64, i64, Vec<Row>)>> {
                macro_rules! claim_query {
                    () => {
                        sqlx::query(&q.claim)
                            .bind(owner)
                            .bind(lease_until)
                            .bind(topic)
                            .bind(group)
                            .bind(owner)
                            .bind(now)
                            .bind(now)
                            .bind(topic)
                    };
                }
                let claimed = if q.mysql {
                    let mut conn = pool.acquire().await.map_err(backend_error)?;
                    let mut tx = Connection::begin(&mut *conn).await.map_err(backend_error)?;
                    let updated =
                        claim_query!().execute(&mut *tx).await.map_err(backend_error)?.rows_affected();
                    let state = if updated == 0 {
                        None
                    } else {
                        let row = sqlx::query(&q.group_state)
                            .bind(topic)
                            .bind(group)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(backend_error)?;
                        Some((row.try_get(0).map_err(backend_error)?, row.try_get(1).map_err(backend_error)?))
                    };
                    tx.commit().await.map_err(backend_error)?;
                    state
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
                let rows = sqlx::query_as::<_, Row>(&q.read)
                    .bind(topic)
                    .bind(acked)
                    .bind(batch)
                    .fetch_all(pool)
                    .await
                    .map_err(backend_error)?;
                Ok(Some((acked, attempts, rows)))
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
            pub(crate) async fn nack(
                pool: &$pool,
                q: &Queries,
                topic: &str,
                group: &str,
                owner: &str,
                prev: i64,
                not_before: i64,
            ) -> Result<bool> {
                let done = sqlx::query(&q.nack)
                    .bind(not_before)
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

            /// Deletes a topic: its messages, its groups and its sequence.
            pub(crate) async fn delete_topic(pool: &$pool, q: &Queries, topic: &str) -> Result<()> {
                for statement in &q.delete_topic {
                    sqlx::query(statement).bind(topic).execute(pool).await.map_err(backend_error)?;
                }
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
dialect!(mysql, sqlx::MySql, sqlx::MySqlConnection, sqlx::MySqlPool);
#[cfg(feature = "postgres")]
dialect!(postgres, sqlx::Postgres, sqlx::PgConnection, sqlx::PgPool);
#[cfg(feature = "sqlite")]
dialect!(sqlite, sqlx::Sqlite, sqlx::SqliteConnection, sqlx::SqlitePool);
