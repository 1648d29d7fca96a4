//! [`Queries`]: the SQL text of the backend's statements, built once per dialect and table prefix.

use super::db::Dialect;

/// The SQL text for one dialect and table prefix.
pub(super) struct Queries {
    pub(super) mysql: bool,
    pub(super) schema_lock: Option<String>,
    pub(super) schema: Vec<String>,
    /// MySQL: whether `messages` has its `size` column yet, and the statement that adds it (to
    /// tables created before it existed).
    pub(super) size_column: Option<[String; 2]>,
    /// MySQL: the server's largest packet, which bounds a statement and a row.
    pub(super) packet_limit: Option<String>,
    pub(super) reserve: String,
    /// PostgreSQL: the publish in one statement (see `ops::postgres_publish_one`).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(super) publish_one: Option<String>,
    /// MySQL: the tables `ops::mysql_publish_one` names in its text (`topics`, `messages`).
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(super) tables: [String; 2],
    pub(super) create_topic: String,
    pub(super) insert_prefix: String,
    pub(super) create_group: String,
    pub(super) claim: String,
    /// Whether a group has anything after `acked` (a read: an idle subscription's poll), and
    /// with the second bind false, only where its lease holder let the lease run out before the
    /// third (a hung handler, or a dead process).
    pub(super) waiting: String,
    pub(super) group_state: String,
    pub(super) read: String,
    pub(super) ack: String,
    pub(super) nack: String,
    pub(super) release: String,
    pub(super) renew: String,
    pub(super) stored_id: String,
    pub(super) stored_after: String,
    pub(super) all_topics: String,
    pub(super) retention_bound: String,
    pub(super) first_seq: String,
    pub(super) trim: String,
    pub(super) delete_group: String,
    pub(super) delete_topic: [String; 5],
    /// A topic's recorded partition count and whether it has a row of its own (unpartitioned).
    pub(super) layout: String,
    pub(super) record_partitions: String,
    /// A partitioned group's member says it is alive until a time.
    pub(super) member_beat: String,
    pub(super) members: String,
    pub(super) member_leave: String,
    pub(super) members_expire: String,
}

/// `?` placeholders become `$1`, `$2`, ... for PostgreSQL (no statement here has a literal `?`).
pub(super) fn number_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

impl Queries {
    pub(super) fn new(dialect: Dialect, p: &str) -> Queries {
        // MySQL: names compare byte for byte (`utf8mb4_bin`: `Orders` and `orders` are two topics);
        // the columns read back as text keep a text collation (sqlx reads `_bin` ones as bytes).
        let (text, key, id, blob, big) = match dialect {
            Dialect::Sqlite => ("TEXT", "TEXT", "TEXT", "BLOB", "INTEGER"),
            Dialect::Postgres => ("TEXT", "TEXT", "TEXT", "BYTEA", "BIGINT"),
            Dialect::MySql => (
                "LONGTEXT",
                "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
                "VARCHAR(64)",
                "LONGBLOB",
                "BIGINT",
            ),
        };
        // MySQL keeps each payload's size in a column: its `LENGTH(payload)` reads the whole blob
        // (SQLite reads the length from the row's header, PostgreSQL from the TOAST pointer; a
        // column stored after the payload would cost SQLite a walk of the blob's overflow pages).
        let (size_column, size) = match dialect {
            Dialect::MySql => (", size BIGINT NULL", "COALESCE(size, LENGTH(payload))"),
            _ => ("", "LENGTH(payload)"),
        };
        let table_options = if dialect == Dialect::MySql {
            " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"
        } else {
            ""
        };
        let schema = vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {p}topics (topic {key} NOT NULL PRIMARY KEY, \
                 last_seq {big} NOT NULL){table_options}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {p}messages (topic {key} NOT NULL, seq {big} NOT NULL, \
                 id {id} NOT NULL, metadata {text} NOT NULL, payload {blob} NOT NULL, \
                 created_ms {big} NOT NULL{size_column}, PRIMARY KEY (topic, seq)){table_options}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {p}groups (topic {key} NOT NULL, grp {key} NOT NULL, \
                 acked {big} NOT NULL, head_attempts {big} NOT NULL, owner {key} NULL, \
                 lease_until {big} NOT NULL, not_before {big} NOT NULL, \
                 PRIMARY KEY (topic, grp)){table_options}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {p}partitions (topic {key} NOT NULL PRIMARY KEY, \
                 parts {big} NOT NULL){table_options}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {p}members (topic {key} NOT NULL, grp {key} NOT NULL, \
                 owner {key} NOT NULL, alive_until {big} NOT NULL, \
                 PRIMARY KEY (topic, grp, owner)){table_options}"
            ),
        ];
        let mysql = dialect == Dialect::MySql;
        let returning =
            |sql: String, columns: &str| if mysql { sql } else { format!("{sql} RETURNING {columns}") };
        let (ignore, on_conflict) = if mysql { (" IGNORE", "") } else { ("", " ON CONFLICT DO NOTHING") };
        let sql = |sql: String| if dialect == Dialect::Postgres { number_placeholders(&sql) } else { sql };
        // A length bound as a parameter (PostgreSQL's `substr` takes an `integer`, not a `bigint`).
        let len = if dialect == Dialect::Postgres { "CAST(? AS INTEGER)" } else { "?" };
        Queries {
            mysql,
            schema_lock: (dialect == Dialect::Postgres)
                .then(|| "SELECT pg_advisory_xact_lock(7305418842461217)".to_owned()),
            schema,
            size_column: mysql.then(|| {
                [
                    format!(
                        "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() \
                         AND table_name = '{p}messages' AND column_name = 'size'"
                    ),
                    format!("ALTER TABLE {p}messages ADD COLUMN size BIGINT NULL"),
                ]
            }),
            // (Unsigned on MySQL, signed on MariaDB.)
            packet_limit: mysql.then(|| "SELECT CAST(@@max_allowed_packet AS SIGNED)".to_owned()),
            // (MySQL: `LAST_INSERT_ID(expr)` hands the new value back with the statement's result.)
            reserve: if mysql {
                format!("UPDATE {p}topics SET last_seq = LAST_INSERT_ID(last_seq + ?) WHERE topic = ?")
            } else {
                sql(returning(format!("UPDATE {p}topics SET last_seq = last_seq + ? WHERE topic = ?"), "last_seq"))
            },
            // The reservation and the rows in one statement, from arrays: $1 the count, $2 the
            // topic, $3..$5 ids, metadata and payloads, $6 the time. `i` runs though nothing reads
            // it (a data-modifying WITH always runs to completion); no row for the topic, no rows.
            publish_one: (dialect == Dialect::Postgres).then(|| {
                format!(
                    "WITH r AS (UPDATE {p}topics SET last_seq = last_seq + $1 WHERE topic = $2 \
                     RETURNING last_seq - $1 AS base), \
                     i AS (INSERT INTO {p}messages (topic, seq, id, metadata, payload, created_ms) \
                     SELECT $2, r.base + v.n, v.id, v.metadata, v.payload, $6 FROM r, \
                     unnest($3::text[], $4::text[], $5::bytea[]) WITH ORDINALITY AS v(id, metadata, payload, n)) \
                     SELECT base + 1 FROM r"
                )
            }),
            tables: [format!("{p}topics"), format!("{p}messages")],
            create_topic: sql(format!("INSERT{ignore} INTO {p}topics (topic, last_seq) VALUES (?, 0){on_conflict}")),
            insert_prefix: format!(
                "INSERT INTO {p}messages (topic, seq, id, metadata, payload, created_ms{}) ",
                if mysql { ", size" } else { "" }
            ),
            create_group: sql(format!(
                "INSERT{ignore} INTO {p}groups (topic, grp, acked, head_attempts, owner, lease_until, not_before) \
                 SELECT ?, ?, CASE WHEN ? THEN COALESCE((SELECT last_seq FROM {p}topics WHERE topic = ?), 0) \
                 ELSE 0 END, 0, NULL, 0, 0 WHERE 1 = 1{on_conflict}"
            )),
            claim: sql(returning(
                format!(
                    "UPDATE {p}groups SET owner = ?, lease_until = ?, head_attempts = head_attempts + 1 \
                     WHERE topic = ? AND grp = ? AND (owner IS NULL OR owner = ? OR lease_until < ? \
                     OR (substr(owner, 1, {len}) = ? AND substr(owner, 1, {len}) <> ?)) \
                     AND not_before <= ? AND acked < (SELECT last_seq FROM {p}topics WHERE topic = ?)"
                ),
                "acked, head_attempts",
            )),
            waiting: sql(format!(
                "SELECT COUNT(*) FROM {p}groups WHERE topic = ? AND grp = ? \
                 AND (? OR (owner IS NOT NULL AND lease_until < ?)) \
                 AND acked < (SELECT last_seq FROM {p}topics WHERE topic = ?)"
            )),
            group_state: sql(format!("SELECT acked, head_attempts FROM {p}groups WHERE topic = ? AND grp = ?")),
            // The rows after `acked`: at most `batch_size` of them, and no more than `batch_bytes`
            // of payload unless the first alone is larger. The inner queries read only sizes.
            // (The rows that fit are a prefix of the batch: sizes add up as `seq` grows.)
            read: sql(if mysql {
                // MariaDB does not bound an index range by a scalar subquery's value: the form
                // below for the others scanned every row after `acked` (all of a backlog) on each
                // read. Here the rows that fit are joined back by key, one lookup each.
                // Binds: topic, acked, batch, batch_bytes, topic.
                format!(
                    "SELECT m.seq, m.id, m.metadata, m.payload FROM (SELECT seq FROM (\
                     SELECT seq, size, SUM(size) OVER (ORDER BY seq) AS upto FROM (\
                     SELECT seq, {size} AS size FROM {p}messages WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?\
                     ) f) w WHERE upto <= ? OR upto = size) s \
                     JOIN {p}messages m ON m.topic = ? AND m.seq = s.seq ORDER BY m.seq"
                )
            } else {
                // PostgreSQL and SQLite bound the range by the subquery's value (an init plan).
                // Binds: topic, acked, topic, acked, batch, batch_bytes.
                format!(
                    "SELECT seq, id, metadata, payload FROM {p}messages WHERE topic = ? AND seq > ? AND seq <= (\
                     SELECT MAX(seq) FROM (\
                     SELECT seq, size, SUM(size) OVER (ORDER BY seq) AS upto FROM (\
                     SELECT seq, {size} AS size FROM {p}messages WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?\
                     ) f) w WHERE upto <= ? OR upto = size) ORDER BY seq"
                )
            }),
            ack: sql(format!(
                "UPDATE {p}groups SET acked = ?, head_attempts = ?, lease_until = ?, owner = ? \
                 WHERE topic = ? AND grp = ? AND owner = ? AND acked = ?"
            )),
            // A nack gives the head back (the next claim counts an attempt); a release gives it back
            // uncounted (one attempt taken off first).
            nack: sql(format!(
                "UPDATE {p}groups SET owner = NULL, not_before = ?, head_attempts = head_attempts - ? \
                 WHERE topic = ? AND grp = ? AND owner = ? AND acked = ?"
            )),
            release: sql(format!(
                "UPDATE {p}groups SET owner = NULL, head_attempts = ? WHERE topic = ? AND grp = ? AND owner = ?"
            )),
            // The heartbeat of a delivery in flight: the lease goes on, if it is still ours.
            renew: sql(format!(
                "UPDATE {p}groups SET lease_until = ? WHERE topic = ? AND grp = ? AND owner = ? AND acked = ?"
            )),
            // Retention: what every group has acked (everything, without groups), oldest first,
            // in ranges of sequence numbers.
            // (MySQL: converted, since sqlx reads a `_bin` column as bytes.)
            stored_id: sql(format!("SELECT id FROM {p}messages WHERE topic = ? AND seq = ?")),
            stored_after: sql(format!("SELECT id FROM {p}messages WHERE topic = ? AND seq > ? AND id = ? LIMIT 1")),
            all_topics: if mysql {
                format!("SELECT CONVERT(topic USING utf8mb4) COLLATE utf8mb4_general_ci FROM {p}topics")
            } else {
                format!("SELECT topic FROM {p}topics")
            },
            retention_bound: sql(format!(
                "SELECT COALESCE((SELECT MIN(acked) FROM {p}groups WHERE topic = ?), \
                 (SELECT last_seq FROM {p}topics WHERE topic = ?), 0)"
            )),
            first_seq: sql(format!("SELECT COALESCE(MIN(seq), 0) FROM {p}messages WHERE topic = ?")),
            trim: sql(format!(
                "DELETE FROM {p}messages WHERE topic = ? AND seq >= ? AND seq < ? AND seq <= ? AND created_ms < ?"
            )),
            delete_group: sql(format!("DELETE FROM {p}groups WHERE topic = ? AND grp = ?")),
            delete_topic: [
                sql(format!("DELETE FROM {p}groups WHERE topic = ?")),
                sql(format!("DELETE FROM {p}messages WHERE topic = ?")),
                sql(format!("DELETE FROM {p}topics WHERE topic = ?")),
                sql(format!("DELETE FROM {p}partitions WHERE topic = ?")),
                sql(format!("DELETE FROM {p}members WHERE topic = ?")),
            ],
            layout: sql(format!(
                "SELECT (SELECT parts FROM {p}partitions WHERE topic = ?), \
                 (SELECT last_seq FROM {p}topics WHERE topic = ?)"
            )),
            record_partitions: sql(format!(
                "INSERT{ignore} INTO {p}partitions (topic, parts) VALUES (?, ?){on_conflict}"
            )),
            member_beat: sql(if mysql {
                format!(
                    "INSERT INTO {p}members (topic, grp, owner, alive_until) VALUES (?, ?, ?, ?) \
                     ON DUPLICATE KEY UPDATE alive_until = VALUES(alive_until)"
                )
            } else {
                format!(
                    "INSERT INTO {p}members (topic, grp, owner, alive_until) VALUES (?, ?, ?, ?) \
                     ON CONFLICT (topic, grp, owner) DO UPDATE SET alive_until = excluded.alive_until"
                )
            }),
            members: sql(if mysql {
                format!(
                    "SELECT CONVERT(owner USING utf8mb4) COLLATE utf8mb4_general_ci FROM {p}members \
                     WHERE topic = ? AND grp = ? AND alive_until >= ?"
                )
            } else {
                format!("SELECT owner FROM {p}members WHERE topic = ? AND grp = ? AND alive_until >= ?")
            }),
            member_leave: sql(format!("DELETE FROM {p}members WHERE topic = ? AND grp = ? AND owner = ?")),
            members_expire: sql(format!(
                "DELETE FROM {p}members WHERE topic = ? AND grp = ? AND alive_until < ?"
            )),
        }
    }
}
