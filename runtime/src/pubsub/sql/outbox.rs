//! The outbox: [`SqlPubSub::publish_in`] publishes on the caller's connection, inside the caller's
//! transaction, through any [`OutboxConnection`].

use super::db::Dialect;
use super::ops;
use super::pubsub::SqlPubSub;
use super::queries::Queries;
use super::stored::StoredMessage;
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;

impl SqlPubSub {
    /// The outbox: publishes `messages` to `topic` on `conn`, the caller's connection, inside the
    /// caller's transaction when there is one, otherwise atomically on their own. On PostgreSQL
    /// this is one statement (a failure leaves the caller's transaction aborted, as any failed
    /// statement does there); on SQLite and MySQL a savepoint in the caller's transaction (or a
    /// transaction of its own). The messages are delivered only once that transaction commits,
    /// and never if it rolls back. `conn` must be of this pub/sub's database. With
    /// [`SqlConfig::partitions`](super::SqlConfig::partitions), the messages of each partition are
    /// published atomically; all of them only inside the caller's transaction.
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
        self.inner.check_sizes(&messages)?;
        let sqlite = C::DIALECT == Dialect::Sqlite;
        if sqlite && self.inner.config.partitions > 1 && !self.layout_checked(topic) {
            // (SQLite: the caller's transaction may hold the database's write lock already, and a
            // write on another connection would wait for it: a partitioned topic's count is
            // recorded on the caller's connection, with the messages, and checked again later.)
            let (recorded, own) = self.read_layout(topic).await?;
            match recorded {
                Some(recorded) => self.compare_layout(topic, Some(recorded))?,
                None => {
                    super::pubsub::refuse_unpartitioned(topic, own, self.inner.config.partitions)?;
                    let parts = i64::from(self.inner.config.partitions);
                    sealed::Sealed::record_partitions(conn, &self.inner.queries, topic, parts).await?;
                }
            }
        } else {
            self.check_layout(topic).await?;
        }
        // In the order of the partitions' numbers, as every publisher locks them.
        for (name, messages) in self.split(topic, messages, Message::key) {
            if !sqlite {
                // (SQLite: the caller's transaction may hold the database's write lock already; the
                // topic row is then created inside it, where SQLite has no gap locks to fear.)
                self.ensure_topic(&name).await?;
            }
            let stored: Vec<_> = messages.into_iter().map(StoredMessage::new).collect();
            sealed::Sealed::publish(conn, &self.inner.queries, &name, &stored, self.inner.insert_bytes())
                .await?;
        }
        // Not woken here: the messages are not visible before the caller commits; subscriptions
        // find them at their next poll.
        Ok(())
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
            chunk_bytes: usize,
        ) -> futures_core::future::BoxFuture<'a, Result<()>>;

        /// Records a partitioned topic's partition count on this connection.
        fn record_partitions<'a>(
            &'a mut self,
            queries: &'a Queries,
            topic: &'a str,
            parts: i64,
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
                chunk_bytes: usize,
            ) -> futures_core::future::BoxFuture<'a, Result<()>> {
                Box::pin(ops::$ops::publish(self, queries, topic, messages, chunk_bytes))
            }

            fn record_partitions<'a>(
                &'a mut self,
                queries: &'a Queries,
                topic: &'a str,
                parts: i64,
            ) -> futures_core::future::BoxFuture<'a, Result<()>> {
                Box::pin(ops::$ops::record_partitions(self, queries, topic, parts))
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
