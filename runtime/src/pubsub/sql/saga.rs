//! [`SqlSagaStore`]: saga instances in the SQL backend's database, each commit written in one
//! transaction with the messages it publishes (the outbox).

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, UNIX_EPOCH};

use parking_lot::Mutex;
use sqlx::Row as _;

use super::db::{backend_error, backoff, is_retryable, now_ms, Dialect, RETRY_ATTEMPTS};
use super::keyed::numbered;
use super::ops::{create_tables, dispatch};
use super::pubsub::SqlPubSub;
use super::stored::{decode_head, StoredMessage};
use crate::error::{ErrorKind, Result};
use crate::message::Message;
use crate::op::OpFuture;
use crate::store::{SagaCommit, SagaKey, SagaLoad, SagaOutcome, SagaStore};

/// The `kind` of a row of the `saga_message` table.
const COMPENSATION: i64 = 0;
const DEADLINE: i64 = 1;

/// Due timeouts one relay round publishes at most (a full round runs again at once).
const RELAY_BATCH: i64 = 100;

/// A [`SagaStore`] in the database of a [`SqlPubSub`] (SQLite, PostgreSQL, MySQL / MariaDB). A
/// commit (the instance's new state, the id of the message it took, the compensations and
/// timeouts it keeps) is written in **one transaction** with the messages the saga handler sent,
/// which go to the pub/sub's topics through its outbox
/// ([`SqlPubSub::publish_in`]): the commands of a step exist if and only if the step's state
/// does. Handlers of those commands read them from this pub/sub (the app's backend, or one named
/// with `pubsub = ".."`).
///
/// ```no_run
/// # use millstream::pubsub::sql::{SqlConfig, SqlPubSub, SqlSagaStore};
/// # use millstream::{App, Sagas};
/// # async fn f() -> millstream::Result<()> {
/// let pubsub = SqlPubSub::connect("postgres://app@db/app", SqlConfig::default()).await?;
/// App::from_registry().pubsub(pubsub.clone()).state(Sagas::new(SqlSagaStore::new(&pubsub)));
/// # Ok(()) }
/// ```
///
/// # Tables
/// Created on first use, with the pub/sub's table prefix (default `millstream_`):
/// `{prefix}saga` (one row per running instance: its JSON state and version),
/// `{prefix}saga_seen` (the messages each running instance took, so a redelivery is acked without
/// running the handler again), `{prefix}saga_message` (compensations and timeouts held), and
/// `{prefix}saga_finished` (how each finished instance ended, with its last state when
/// [`keep_finished_state`](Self::keep_finished_state) is on). A finished instance's other rows are
/// deleted with its last commit; its `saga_finished` row stays until
/// [`purge_finished`](Self::purge_finished) removes it, so a late or redelivered message does not
/// start it again.
///
/// # Concurrency
/// Optimistic: a commit names the version it loaded; when another commit got there first, the
/// transaction is rolled back and the message redelivered (a transient error), to run against
/// the new state.
///
/// # Timeouts
/// Held in `{prefix}saga_message` until due, then published (each in a transaction that deletes
/// its row, so exactly one process publishes it) by a relay that every app using the store runs,
/// polling every [`deadline_poll`](Self::deadline_poll) (default 250 ms). Due times are read from
/// the process's clock.
#[derive(Clone)]
pub struct SqlSagaStore {
    inner: Arc<Inner>,
}

struct Inner {
    pubsub: SqlPubSub,
    tables: Tables,
    keep_state: bool,
    deadline_poll: Duration,
    created: tokio::sync::OnceCell<()>,
    relay_started: Mutex<bool>,
    /// Topics created in the pub/sub's database (outside any commit's transaction).
    topics: Mutex<HashSet<String>>,
}

/// The SQL text, for one dialect and table prefix.
struct Tables {
    dialect: Dialect,
    schema: Vec<String>,
    schema_lock: Option<String>,
    load: String,
    seen: String,
    finished: String,
    insert_seen: String,
    insert_instance: String,
    update_instance: String,
    delete_instance: String,
    delete_seen: String,
    insert_finished: String,
    insert_message: String,
    compensations: String,
    compensation_topics: String,
    delete_messages: String,
    due: String,
    delete_message: String,
    purge_finished: String,
}

impl Tables {
    fn new(dialect: Dialect, prefix: &str) -> Tables {
        let saga = format!("{prefix}saga");
        let seen = format!("{prefix}saga_seen");
        let message = format!("{prefix}saga_message");
        let finished = format!("{prefix}saga_finished");
        // Text keys: MySQL needs bounded ones (an index has at most 3072 bytes, 4 per character).
        let (name, id, text, blob, big, serial, options) = match dialect {
            Dialect::Sqlite => {
                ("TEXT", "TEXT", "TEXT", "BLOB", "INTEGER", "INTEGER PRIMARY KEY AUTOINCREMENT", "")
            }
            Dialect::Postgres => ("TEXT", "TEXT", "TEXT", "BYTEA", "BIGINT", "BIGSERIAL PRIMARY KEY", ""),
            Dialect::MySql => (
                "VARCHAR(128)",
                "VARCHAR(255)",
                "LONGTEXT",
                "LONGBLOB",
                "BIGINT",
                "BIGINT AUTO_INCREMENT PRIMARY KEY",
                " ENGINE=InnoDB",
            ),
        };
        let (due_index, instance_index) = (format!("{message}_due"), format!("{message}_instance"));
        let mut schema = vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {saga} (saga {name} NOT NULL, saga_id {id} NOT NULL, \
                 version {big} NOT NULL, state {text} NOT NULL, started_ms {big} NOT NULL, \
                 updated_ms {big} NOT NULL, PRIMARY KEY (saga, saga_id)){options}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {seen} (saga {name} NOT NULL, saga_id {id} NOT NULL, \
                 message_id {id} NOT NULL, PRIMARY KEY (saga, saga_id, message_id)){options}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {finished} (saga {name} NOT NULL, saga_id {id} NOT NULL, \
                 outcome {name} NOT NULL, reason {text}, state {text}, finished_ms {big} NOT NULL, \
                 PRIMARY KEY (saga, saga_id)){options}"
            ),
        ];
        let message_table = |indexes: &str| {
            format!(
                "CREATE TABLE IF NOT EXISTS {message} (seq {serial}, saga {name} NOT NULL, \
                 saga_id {id} NOT NULL, kind {big} NOT NULL, due_ms {big}, topic {text} NOT NULL, \
                 message_id {text} NOT NULL, metadata {text} NOT NULL, payload {blob} NOT NULL{indexes}){options}"
            )
        };
        if dialect == Dialect::MySql {
            // (MySQL has no `CREATE INDEX IF NOT EXISTS`: the indexes come with the table.)
            schema.push(message_table(&format!(
                ", INDEX {due_index} (kind, due_ms), INDEX {instance_index} (saga, saga_id)"
            )));
        } else {
            schema.push(message_table(""));
            schema.push(format!("CREATE INDEX IF NOT EXISTS {due_index} ON {message} (kind, due_ms)"));
            schema.push(format!("CREATE INDEX IF NOT EXISTS {instance_index} ON {message} (saga, saga_id)"));
        }
        let n = |sql: String| numbered(dialect, sql);
        Tables {
            dialect,
            schema,
            schema_lock: (dialect == Dialect::Postgres).then(|| "SELECT pg_advisory_xact_lock(7305418842461219)".into()),
            load: n(format!("SELECT version, state FROM {saga} WHERE saga = ? AND saga_id = ?")),
            seen: n(format!("SELECT 1 FROM {seen} WHERE saga = ? AND saga_id = ? AND message_id = ?")),
            finished: n(format!("SELECT outcome, reason FROM {finished} WHERE saga = ? AND saga_id = ?")),
            insert_seen: n(format!("INSERT INTO {seen} (saga, saga_id, message_id) VALUES (?, ?, ?)")),
            insert_instance: n(format!(
                "INSERT INTO {saga} (saga, saga_id, version, state, started_ms, updated_ms) VALUES (?, ?, 1, ?, ?, ?)"
            )),
            update_instance: n(format!(
                "UPDATE {saga} SET version = version + 1, state = ?, updated_ms = ? \
                 WHERE saga = ? AND saga_id = ? AND version = ?"
            )),
            delete_instance: n(format!("DELETE FROM {saga} WHERE saga = ? AND saga_id = ?")),
            delete_seen: n(format!("DELETE FROM {seen} WHERE saga = ? AND saga_id = ?")),
            insert_finished: n(format!(
                "INSERT INTO {finished} (saga, saga_id, outcome, reason, state, finished_ms) VALUES (?, ?, ?, ?, ?, ?)"
            )),
            insert_message: n(format!(
                "INSERT INTO {message} (saga, saga_id, kind, due_ms, topic, message_id, metadata, payload) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            )),
            compensations: n(format!(
                "SELECT topic, message_id, metadata, payload FROM {message} \
                 WHERE saga = ? AND saga_id = ? AND kind = {COMPENSATION} ORDER BY seq DESC"
            )),
            compensation_topics: n(format!(
                "SELECT DISTINCT topic FROM {message} WHERE saga = ? AND saga_id = ? AND kind = {COMPENSATION}"
            )),
            delete_messages: n(format!("DELETE FROM {message} WHERE saga = ? AND saga_id = ?")),
            due: n(format!(
                "SELECT seq, topic, message_id, metadata, payload FROM {message} \
                 WHERE kind = {DEADLINE} AND due_ms <= ? ORDER BY due_ms, seq LIMIT {RELAY_BATCH}"
            )),
            delete_message: n(format!("DELETE FROM {message} WHERE seq = ?")),
            purge_finished: n(format!("DELETE FROM {finished} WHERE finished_ms <= ?")),
        }
    }
}

/// One message as kept in `saga_message` and read back.
struct Kept {
    topic: String,
    message: Message,
}

fn kept(topic: String, id: &str, metadata: &str, payload: Vec<u8>) -> Kept {
    let (id, metadata) = decode_head(id, metadata);
    Kept { topic, message: Message::from_parts(id, metadata, payload.into()) }
}

/// The [`Kept`] message in the columns `topic, message_id, metadata, payload` of a row of any
/// of the databases, from column `$first` on; `?` on a column that does not decode.
macro_rules! kept_at {
    ($row:expr, $first:expr) => {{
        let row = &$row;
        let topic: String = row.try_get($first).map_err(backend_error)?;
        let message_id: String = row.try_get($first + 1).map_err(backend_error)?;
        let metadata: String = row.try_get($first + 2).map_err(backend_error)?;
        let payload: Vec<u8> = row.try_get($first + 3).map_err(backend_error)?;
        kept(topic, &message_id, &metadata, payload)
    }};
}

fn outcome_text(outcome: &SagaOutcome) -> (&'static str, Option<&str>) {
    match outcome {
        SagaOutcome::Completed => ("completed", None),
        SagaOutcome::Failed(reason) => ("failed", Some(reason)),
    }
}

/// A unique-key violation: another commit of the same instance or message got there first.
fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// What a commit's transaction ended with, before it is retried or reported.
enum Step {
    Committed,
    Conflict,
}

impl SqlSagaStore {
    /// A store in `pubsub`'s database, sharing its pool and table prefix; the messages of each
    /// commit are published to `pubsub`.
    pub fn new(pubsub: &SqlPubSub) -> Self {
        let tables = Tables::new(pubsub.dialect(), &pubsub.inner.config.table_prefix);
        SqlSagaStore {
            inner: Arc::new(Inner {
                pubsub: pubsub.clone(),
                tables,
                keep_state: false,
                deadline_poll: Duration::from_millis(250),
                created: tokio::sync::OnceCell::new(),
                relay_started: Mutex::new(false),
                topics: Mutex::new(HashSet::new()),
            }),
        }
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("SqlSagaStore is configured before it is shared")
    }

    /// Keeps a finished instance's last state in `{prefix}saga_finished` (an archive) instead of
    /// dropping it. Off by default. Set before the store is cloned or used.
    pub fn keep_finished_state(mut self, keep: bool) -> Self {
        self.inner_mut().keep_state = keep;
        self
    }

    /// How often the timeout relay looks for due timeouts (default 250 ms). Set before the store
    /// is cloned or used.
    pub fn deadline_poll(mut self, every: Duration) -> Self {
        self.inner_mut().deadline_poll = every.max(Duration::from_millis(1));
        self
    }

    /// The database.
    pub fn dialect(&self) -> Dialect {
        self.inner.tables.dialect
    }

    /// Creates the tables now rather than on first use (idempotent).
    pub async fn ensure_schema(&self) -> Result<()> {
        self.inner.ensure().await
    }

    /// Publishes every timeout due now (what the relay does each round); returns how many.
    pub async fn fire_due_deadlines(&self) -> Result<usize> {
        self.inner.fire_due().await
    }

    /// How a finished instance ended, while its `saga_finished` row is kept, with its last state
    /// if [`keep_finished_state`](Self::keep_finished_state) was on.
    pub async fn finished(&self, saga: &str, id: &str) -> Result<Option<(SagaOutcome, Option<String>)>> {
        let inner = &self.inner;
        inner.ensure().await?;
        let sql = numbered(
            inner.tables.dialect,
            format!(
                "SELECT outcome, reason, state FROM {}saga_finished WHERE saga = ? AND saga_id = ?",
                inner.pubsub.inner.config.table_prefix
            ),
        );
        dispatch!(&inner.pubsub.inner.pool, (pool, _ops) => {
            let row = sqlx::query(&sql).bind(saga).bind(id).fetch_optional(pool).await.map_err(backend_error)?;
            row.map(|row| -> Result<_> {
                let outcome: String = row.try_get(0).map_err(backend_error)?;
                let reason: Option<String> = row.try_get(1).map_err(backend_error)?;
                let state: Option<String> = row.try_get(2).map_err(backend_error)?;
                Ok((parse_outcome(&outcome, reason), state))
            })
            .transpose()
        })
    }

    /// Deletes the `saga_finished` rows of instances that finished more than `older_than` ago;
    /// returns how many. A message for such an instance that arrives later starts it again if
    /// its handler starts the saga.
    pub async fn purge_finished(&self, older_than: Duration) -> Result<u64> {
        let inner = &self.inner;
        inner.ensure().await?;
        let before = now_ms().saturating_sub(super::db::millis(older_than));
        let sql = &inner.tables.purge_finished;
        dispatch!(&inner.pubsub.inner.pool, (pool, _ops) => sqlx::query(sql)
            .bind(before)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(backend_error))
    }
}

fn parse_outcome(outcome: &str, reason: Option<String>) -> SagaOutcome {
    match outcome {
        "completed" => SagaOutcome::Completed,
        _ => SagaOutcome::Failed(reason.unwrap_or_default()),
    }
}

impl Inner {
    async fn ensure(&self) -> Result<()> {
        self.created
            .get_or_try_init(|| async {
                self.pubsub.ensure_schema().await?;
                let tables = &self.tables;
                create_tables(&self.pubsub.inner.pool, tables.schema_lock.as_deref(), &tables.schema).await
            })
            .await
            .map(|_| ())
    }

    /// Creates the topics a commit publishes to, outside its transaction (SQLite creates them
    /// inside: it has no gap locks to fear).
    async fn ensure_topics<'a>(&self, topics: impl Iterator<Item = &'a str>) -> Result<()> {
        if self.tables.dialect == Dialect::Sqlite {
            return Ok(());
        }
        for topic in topics {
            if self.topics.lock().contains(topic) {
                continue;
            }
            self.pubsub.ensure_topic(topic).await?;
            self.topics.lock().insert(topic.to_owned());
        }
        Ok(())
    }

    /// MySQL keys are `VARCHAR(255)`: a longer instance or message id would fail every time (or
    /// be cut and collide), so it is refused for good.
    fn check_key(&self, key: SagaKey<'_>, message_id: &str) -> Result<()> {
        if self.tables.dialect != Dialect::MySql {
            return Ok(());
        }
        for (what, text) in [("saga name", key.saga), ("instance id", key.id), ("message id", message_id)] {
            let limit = if what == "saga name" { 128 } else { 255 };
            if text.chars().count() > limit {
                return Err(crate::error::Error::permanent(format!(
                    "saga store on MySQL: the {what} has more than {limit} characters: {text:.64}.."
                )));
            }
        }
        Ok(())
    }

    async fn load(&self, key: SagaKey<'_>, message_id: &str) -> Result<SagaLoad> {
        self.check_key(key, message_id)?;
        self.ensure().await?;
        let t = &self.tables;
        dispatch!(&self.pubsub.inner.pool, (pool, _ops) => {
            let row = sqlx::query(&t.load)
                .bind(key.saga)
                .bind(key.id)
                .fetch_optional(pool)
                .await
                .map_err(backend_error)?;
            if let Some(row) = row {
                let version: i64 = row.try_get(0).map_err(backend_error)?;
                let state: String = row.try_get(1).map_err(backend_error)?;
                let seen = sqlx::query(&t.seen)
                    .bind(key.saga)
                    .bind(key.id)
                    .bind(message_id)
                    .fetch_optional(pool)
                    .await
                    .map_err(backend_error)?
                    .is_some();
                return Ok(SagaLoad::Running { state, version: u64::try_from(version).unwrap_or(0), seen });
            }
            let finished = sqlx::query(&t.finished)
                .bind(key.saga)
                .bind(key.id)
                .fetch_optional(pool)
                .await
                .map_err(backend_error)?;
            match finished {
                Some(row) => {
                    let outcome: String = row.try_get(0).map_err(backend_error)?;
                    let reason: Option<String> = row.try_get(1).map_err(backend_error)?;
                    Ok(SagaLoad::Finished(parse_outcome(&outcome, reason)))
                }
                None => Ok(SagaLoad::Absent),
            }
        })
    }

    /// The topics of the compensations `key`'s instance keeps.
    async fn compensation_topics(&self, key: SagaKey<'_>) -> Result<Vec<String>> {
        let sql = &self.tables.compensation_topics;
        dispatch!(&self.pubsub.inner.pool, (pool, _ops) => {
            let rows = sqlx::query(sql).bind(key.saga).bind(key.id).fetch_all(pool).await.map_err(backend_error)?;
            rows.iter().map(|row| row.try_get::<String, _>(0).map_err(backend_error)).collect()
        })
    }

    async fn commit(&self, commit: &SagaCommit<'_>) -> Result<bool> {
        self.check_key(commit.key, commit.message_id)?;
        self.ensure().await?;
        let messages = commit.send.iter().chain(&commit.compensations).map(|m| &m.message);
        self.pubsub.inner.check_sizes(messages.chain(commit.deadlines.iter().map(|d| &d.message)))?;
        // Every topic the commit may publish to exists before its transaction begins: what it
        // sends, its timeouts, and, when it fails the saga, the compensations kept until now.
        let kept = match commit.finish {
            Some(SagaOutcome::Failed(_)) if self.tables.dialect != Dialect::Sqlite => {
                self.compensation_topics(commit.key).await?
            }
            _ => Vec::new(),
        };
        let sent = commit.send.iter().chain(&commit.compensations).map(|m| m.topic.as_str());
        let topics = sent
            .chain(commit.deadlines.iter().map(|d| d.topic.as_str()))
            .chain(kept.iter().map(String::as_str));
        self.ensure_topics(topics).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.commit_once(commit).await {
                Ok(Step::Committed) => return Ok(true),
                Ok(Step::Conflict) => return Ok(false),
                Err(error) if attempt < RETRY_ATTEMPTS && is_retryable(&error) => backoff(attempt).await,
                Err(error) => return Err(error),
            }
        }
    }

    async fn commit_once(&self, commit: &SagaCommit<'_>) -> Result<Step> {
        let t = &self.tables;
        let SagaKey { saga, id } = commit.key;
        let now = now_ms();
        let pubsub = &self.pubsub;
        // The compensations to publish are read inside the transaction, before their rows go.
        dispatch!(&pubsub.inner.pool, (pool, ops) => {
            let mut tx = pool.begin().await.map_err(backend_error)?;
            // A conflict: roll back (dropping `tx`) and report it.
            macro_rules! conflict_on_unique {
                ($result:expr) => {
                    match $result {
                        Ok(done) => done,
                        Err(error) if is_unique_violation(&error) => return Ok(Step::Conflict),
                        Err(error) => return Err(backend_error(error)),
                    }
                };
            }
            conflict_on_unique!(sqlx::query(&t.insert_seen).bind(saga).bind(id).bind(commit.message_id).execute(&mut *tx).await);
            match commit.version {
                None => {
                    conflict_on_unique!(sqlx::query(&t.insert_instance)
                        .bind(saga)
                        .bind(id)
                        .bind(&commit.state)
                        .bind(now)
                        .bind(now)
                        .execute(&mut *tx)
                        .await);
                    // An instance that finished after this message was loaded (its rows gone, a
                    // concurrent finish committed first): not started again. Read after the
                    // insert, which waits for a finish still deleting the row.
                    let finished = sqlx::query(&t.finished)
                        .bind(saga)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(backend_error)?;
                    if finished.is_some() {
                        return Ok(Step::Conflict);
                    }
                }
                Some(version) => {
                    let done = sqlx::query(&t.update_instance)
                        .bind(&commit.state)
                        .bind(now)
                        .bind(saga)
                        .bind(id)
                        .bind(i64::try_from(version).unwrap_or(i64::MAX))
                        .execute(&mut *tx)
                        .await
                        .map_err(backend_error)?;
                    if done.rows_affected() != 1 {
                        return Ok(Step::Conflict);
                    }
                }
            }
            let mut publish: Vec<Kept> = commit
                .send
                .iter()
                .map(|m| Kept { topic: m.topic.clone(), message: m.message.clone() })
                .collect();
            match &commit.finish {
                None => {
                    let held = commit
                        .compensations
                        .iter()
                        .map(|m| (COMPENSATION, None, m.topic.as_str(), &m.message))
                        .chain(commit.deadlines.iter().map(|d| {
                            let due = d.due.duration_since(UNIX_EPOCH).unwrap_or_default();
                            let due = i64::try_from(due.as_millis()).unwrap_or(i64::MAX);
                            (DEADLINE, Some(due), d.topic.as_str(), &d.message)
                        }));
                    for (kind, due, topic, message) in held {
                        let stored = StoredMessage::new(message.clone());
                        sqlx::query(&t.insert_message)
                            .bind(saga)
                            .bind(id)
                            .bind(kind)
                            .bind(due)
                            .bind(topic)
                            .bind(&stored.id)
                            .bind(&stored.metadata)
                            .bind(&stored.payload[..])
                            .execute(&mut *tx)
                            .await
                            .map_err(backend_error)?;
                    }
                }
                Some(outcome) => {
                    if matches!(outcome, SagaOutcome::Failed(_)) {
                        // This commit's compensations are the newest.
                        for m in commit.compensations.iter().rev() {
                            publish.push(Kept { topic: m.topic.clone(), message: m.message.clone() });
                        }
                        let rows = sqlx::query(&t.compensations)
                            .bind(saga)
                            .bind(id)
                            .fetch_all(&mut *tx)
                            .await
                            .map_err(backend_error)?;
                        for row in rows {
                            publish.push(kept_at!(row, 0));
                        }
                    }
                    for statement in [&t.delete_messages, &t.delete_seen, &t.delete_instance] {
                        sqlx::query(statement).bind(saga).bind(id).execute(&mut *tx).await.map_err(backend_error)?;
                    }
                    let (outcome, reason) = outcome_text(outcome);
                    let state = self.keep_state.then_some(commit.state.as_str());
                    conflict_on_unique!(sqlx::query(&t.insert_finished)
                        .bind(saga)
                        .bind(id)
                        .bind(outcome)
                        .bind(reason)
                        .bind(state)
                        .bind(now)
                        .execute(&mut *tx)
                        .await);
                }
            }
            for (topic, stored) in runs(publish) {
                ops::publish(&mut tx, &pubsub.inner.queries, &topic, &stored, pubsub.inner.insert_bytes()).await?;
            }
            tx.commit().await.map_err(backend_error)?;
            Ok(Step::Committed)
        })
    }

    async fn fire_due(&self) -> Result<usize> {
        self.ensure().await?;
        let t = &self.tables;
        let pubsub = &self.pubsub;
        let mut fired = 0;
        loop {
            let rows: Vec<(i64, Kept)> = dispatch!(&pubsub.inner.pool, (pool, _ops) => {
                let rows = sqlx::query(&t.due).bind(now_ms()).fetch_all(pool).await.map_err(backend_error)?;
                rows.into_iter()
                    .map(|row| -> Result<(i64, Kept)> {
                        let seq: i64 = row.try_get(0).map_err(backend_error)?;
                        Ok((seq, kept_at!(row, 1)))
                    })
                    .collect::<Result<_>>()?
            });
            let full = rows.len() as i64 >= RELAY_BATCH;
            self.ensure_topics(rows.iter().map(|(_, k)| k.topic.as_str())).await?;
            for (seq, due) in rows {
                let stored = [StoredMessage::new(due.message)];
                let published: bool = dispatch!(&pubsub.inner.pool, (pool, ops) => {
                    let mut tx = pool.begin().await.map_err(backend_error)?;
                    let done = sqlx::query(&t.delete_message).bind(seq).execute(&mut *tx).await.map_err(backend_error)?;
                    // Another process published it.
                    if done.rows_affected() == 1 {
                        ops::publish(&mut tx, &pubsub.inner.queries, &due.topic, &stored, pubsub.inner.insert_bytes()).await?;
                        tx.commit().await.map_err(backend_error)?;
                        true
                    } else {
                        false
                    }
                });
                fired += usize::from(published);
            }
            if !full {
                return Ok(fired);
            }
        }
    }
}

/// `messages` in order, grouped in runs of consecutive messages to the same topic.
fn runs(messages: Vec<Kept>) -> Vec<(String, Vec<StoredMessage>)> {
    let mut runs: Vec<(String, Vec<StoredMessage>)> = Vec::new();
    for Kept { topic, message } in messages {
        match runs.last_mut() {
            Some((last, run)) if *last == topic => run.push(StoredMessage::new(message)),
            _ => runs.push((topic, vec![StoredMessage::new(message)])),
        }
    }
    runs
}

/// The relay: publishes due timeouts until the store is dropped.
async fn relay(inner: Weak<Inner>) {
    let mut failures = 0u32;
    loop {
        let Some(store) = inner.upgrade() else { return };
        let poll = store.deadline_poll;
        match store.fire_due().await {
            Ok(_) => failures = 0,
            // The pub/sub was closed (its pool with it): nothing more to relay.
            Err(error)
                if error.kind() == ErrorKind::Closed
                    || matches!(error.downcast_ref::<sqlx::Error>(), Some(sqlx::Error::PoolClosed)) =>
            {
                return
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(%error, failures, "saga store: publishing due timeouts failed; trying again");
                }
            }
        }
        drop(store);
        tokio::time::sleep(poll).await;
    }
}

impl SagaStore for SqlSagaStore {
    fn load<'a>(&'a self, key: SagaKey<'a>, message_id: &'a str) -> OpFuture<'a, SagaLoad> {
        OpFuture::boxed(self.inner.load(key, message_id))
    }

    fn commit<'a>(&'a self, commit: SagaCommit<'a>) -> OpFuture<'a, bool> {
        OpFuture::boxed(async move { self.inner.commit(&commit).await })
    }

    fn start(&self) {
        let mut started = self.inner.relay_started.lock();
        if *started {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(relay(Arc::downgrade(&self.inner)));
                *started = true;
            }
            // (An app built outside a runtime: started again when it runs.)
            Err(_) => tracing::debug!(
                "saga store: not in a tokio runtime yet; timeouts are relayed once the app runs"
            ),
        }
    }
}

impl fmt::Debug for SqlSagaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlSagaStore")
            .field("dialect", &self.inner.tables.dialect)
            .field("keep_finished_state", &self.inner.keep_state)
            .field("deadline_poll", &self.inner.deadline_poll)
            .finish_non_exhaustive()
    }
}
