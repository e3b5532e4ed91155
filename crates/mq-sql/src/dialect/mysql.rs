//! MySQL and MariaDB: `SELECT ... FOR UPDATE SKIP LOCKED` in a transaction, then `UPDATE` by id
//! and read back (no `UPDATE ... RETURNING`). Needs MySQL >= 8.0.1 or MariaDB >= 10.6.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use mq_core::backend::Claim;
use mq_core::{Message, QueueName};
use sqlx::mysql::{MySqlArguments, MySqlConnectOptions, MySqlPoolOptions, MySqlQueryResult};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Executor, MySql, MySqlConnection, MySqlPool};

use super::{CHUNK, Dialect};
use crate::error::{Error, backend};
use crate::options::SqlOptions;
use crate::retention::Cutoff;
use crate::store::{
    COLS, CompletionRow, InsertRow, Names, RawRow, SqlStore, decode, insert_chunks, micros,
};

super::aliases!(
    MySql, "MySQL or MariaDB", feature "mysql", pool MySqlPool:
    MySqlQueue, MySqlCheckpointStore, MySqlDeadLetterStore, MySqlLeaseTable
);

impl Dialect for MySql {
    const KIND: &'static str = "mysql";
    super::migrations!("mysql");
    // DDL commits implicitly in MySQL: no transaction.
    const TRANSACTIONAL_DDL: bool = false;
    const REMEMBER_CONFLICT: &'static str =
        " ON DUPLICATE KEY UPDATE forget_at = VALUES(forget_at)";
    const PAUSE_CONFLICT: &'static str = " ON DUPLICATE KEY UPDATE queue = queue";
    // No partial indexes: a generated column holds the key while the message waits or runs.
    const HELD_KEY: &'static str = "unique_held";
    const BEGIN_WRITE: &'static str = "BEGIN";
    // No gap locks on a missing row: racing first inserts fail with a duplicate key instead of
    // deadlocking.
    const BEFORE_WRITE: Option<&'static str> =
        Some("SET TRANSACTION ISOLATION LEVEL READ COMMITTED");
    const LOCK_ROW: &'static str = " FOR UPDATE";
    const TABLE_EXISTS: &'static str = "SELECT COUNT(*) AS n FROM information_schema.tables \
        WHERE table_schema = DATABASE() AND table_name = ";

    type Time = NaiveDateTime;

    fn to_time(t: DateTime<Utc>) -> NaiveDateTime {
        t.naive_utc()
    }
    fn from_time(t: NaiveDateTime) -> Result<DateTime<Utc>, sqlx::Error> {
        Ok(t.and_utc())
    }
    fn rows_affected(done: &MySqlQueryResult) -> u64 {
        done.rows_affected()
    }
    fn already_applied(e: &dyn sqlx::error::DatabaseError) -> bool {
        // Duplicate column (1060), duplicate index (1061), table exists (1050): a concurrent
        // process ran the same step first.
        e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| matches!(e.number(), 1050 | 1060 | 1061))
    }
    fn dead_letter_upsert(_table: &str) -> String {
        " ON DUPLICATE KEY UPDATE \
        failures = failures + 1, error = VALUES(error), error_text = VALUES(error_text), \
        exhausted = VALUES(exhausted), attempts = GREATEST(attempts, VALUES(attempts)), \
        first_failed_at = LEAST(first_failed_at, VALUES(first_failed_at)), \
        last_failed_at = GREATEST(last_failed_at, VALUES(last_failed_at)), \
        consumer_id = VALUES(consumer_id)"
            .to_owned()
    }

    async fn connect_pool(url: &str, options: &SqlOptions) -> Result<MySqlPool, sqlx::Error> {
        let opts = MySqlConnectOptions::from_str(url)?.timezone(Some("+00:00".to_owned()));
        MySqlPoolOptions::new()
            .max_connections(options.get_max_connections())
            .acquire_timeout(options.get_connect_timeout())
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
    }

    async fn check_server(pool: &MySqlPool) -> Result<(), Error> {
        let version: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(pool)
            .await
            .map_err(|e| Error::Connect {
                database: "mysql",
                target: "(pool)".into(),
                source: Box::new(e),
            })?;
        check_version(&version)
    }

    async fn insert(
        store: &SqlStore<Self>,
        queue: &QueueName,
        messages: &[Message],
    ) -> mq_core::Result<Vec<String>> {
        let t = &store.names.table;
        let mut tries = 0;
        loop {
            tries += 1;
            match try_insert(&store.pool, t, queue, messages).await {
                // A concurrent publisher stored one of the ids or took one of the keys between
                // our check and insert: check again.
                Err(e) if (is_duplicate_key(&e) || is_deadlock(&e)) && tries < INSERT_TRIES => {}
                other => return other.map_err(backend("publish")),
            }
        }
    }

    async fn claim(
        store: &SqlStore<Self>,
        queue: &QueueName,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> mq_core::Result<(Vec<RawRow>, Vec<RawRow>)> {
        let t = &store.names.table;
        let n = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut tx = store.pool.begin().await.map_err(backend("claim"))?;
        // The clock and whether the queue is paused, in one round trip.
        let (now, paused): (NaiveDateTime, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT UTC_TIMESTAMP(6), (SELECT COUNT(*) FROM {} WHERE queue = ?)",
            store.names.paused
        )))
        .bind(queue.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(backend("claim"))?;
        // A paused queue hands out nothing (its expired messages are still marked).
        let n_take = if paused > 0 { 0 } else { n };
        let expired = lock_ids(&mut tx, t, queue, EXPIRED, "expires_at", now, n)
            .await
            .map_err(backend("claim"))?;
        if !expired.is_empty() {
            let sql = format!(
                "UPDATE {t} SET status = 'expired', updated_at = ? WHERE queue = ? AND id IN ({})",
                placeholders(expired.len())
            );
            let q = sqlx::query(AssertSqlSafe(sql)).bind(now);
            bind_ids(q, queue, &expired)
                .execute(&mut *tx)
                .await
                .map_err(backend("claim"))?;
        }
        let mut picked = if n_take > 0 {
            lock_ids(&mut tx, t, queue, LAPSED, "lease_expires_at", now, n_take)
                .await
                .map_err(backend("claim"))?
        } else {
            Vec::new()
        };
        let left = n_take - picked.len() as i64;
        if left > 0 {
            let order = "priority DESC, execute_at, seq";
            let ready = lock_ids(&mut tx, t, queue, READY, order, now, left)
                .await
                .map_err(backend("claim"))?;
            picked.extend(ready);
        }
        if !picked.is_empty() {
            let lease_end = now + chrono::Duration::microseconds(micros(lease));
            let sql = format!(
                "UPDATE {t} SET status = 'processing', lease_owner = ?, lease_expires_at = ?, \
                 attempts = attempts + 1, processing_started_at = ?, updated_at = ? \
                 WHERE queue = ? AND id IN ({})",
                placeholders(picked.len())
            );
            let q = sqlx::query(AssertSqlSafe(sql))
                .bind(owner)
                .bind(lease_end)
                .bind(now)
                .bind(now);
            bind_ids(q, queue, &picked)
                .execute(&mut *tx)
                .await
                .map_err(backend("claim"))?;
        }
        let mut claimed = Vec::with_capacity(picked.len());
        let mut gone = Vec::with_capacity(expired.len());
        let all: Vec<String> = picked.into_iter().chain(expired).collect();
        for chunk in all.chunks(CHUNK) {
            let sql = format!(
                "SELECT {COLS} FROM {t} WHERE queue = ? AND id IN ({})",
                placeholders(chunk.len())
            );
            let q = bind_ids(sqlx::query(AssertSqlSafe(sql)), queue, chunk);
            for row in q.fetch_all(&mut *tx).await.map_err(backend("claim"))? {
                let raw = decode::<MySql>(&row).map_err(backend("claim"))?;
                if raw.status == "expired" {
                    gone.push(raw);
                } else {
                    claimed.push(raw);
                }
            }
        }
        tx.commit().await.map_err(backend("claim"))?;
        Ok((claimed, gone))
    }

    async fn renew(
        store: &SqlStore<Self>,
        queue: &QueueName,
        owner: &str,
        claims: &[Claim],
        lease: Duration,
    ) -> mq_core::Result<Vec<String>> {
        let t = &store.names.table;
        let pairs: Vec<(String, i32)> = claims
            .iter()
            .map(|c| {
                (
                    c.id.as_str().to_owned(),
                    i32::try_from(c.attempt).unwrap_or(i32::MAX),
                )
            })
            .collect();
        let mut tx = store.pool.begin().await.map_err(backend("renew"))?;
        let kept = held(&mut tx, t, queue, owner, &pairs)
            .await
            .map_err(backend("renew"))?;
        let ids: Vec<&String> = kept.iter().collect();
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "UPDATE {t} SET lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                 WHERE queue = ? AND id IN ({})",
                placeholders(chunk.len())
            );
            let q = sqlx::query(AssertSqlSafe(sql)).bind(micros(lease));
            let q = bind_ids(q, queue, chunk);
            q.execute(&mut *tx).await.map_err(backend("renew"))?;
        }
        tx.commit().await.map_err(backend("renew"))?;
        Ok(kept.into_iter().collect())
    }

    async fn complete(
        store: &SqlStore<Self>,
        queue: &QueueName,
        owner: &str,
        rows: Vec<CompletionRow>,
    ) -> mq_core::Result<Vec<(String, String)>> {
        let t = &store.names.table;
        let pairs: Vec<(String, i32)> = rows.iter().map(|r| (r.id.clone(), r.attempt)).collect();
        let mut tx = store.pool.begin().await.map_err(backend("complete"))?;
        let kept = held(&mut tx, t, queue, owner, &pairs)
            .await
            .map_err(backend("complete"))?;
        let apply: Vec<_> = rows.iter().filter(|r| kept.contains(&r.id)).collect();
        // Acks (the common case) carry no per-message values: one plain `IN` list.
        let (acks, others): (Vec<_>, Vec<_>) = apply
            .iter()
            .copied()
            .partition(|r| r.status == "executed" && r.last_error.is_none());
        let update_sql = format!(
            "UPDATE {t} SET status = 'executed', lease_expires_at = NULL, \
             updated_at = UTC_TIMESTAMP(6) WHERE queue = ? AND id IN ("
        );
        let delete = store.options.get_delete_on_ack();
        for chunk in acks.chunks(CHUNK) {
            let ids = chunk.iter().map(|r| &r.id);
            if delete {
                // A message whose unique key has a window is kept (as executed) so the window
                // can be read: it is updated below.
                let sql = format!(
                    "DELETE FROM {t} WHERE queue = ? AND id IN ({}) AND unique_window_ms IS NULL",
                    placeholders(chunk.len())
                );
                let q = bind_ids(sqlx::query(AssertSqlSafe(sql)), queue, ids.clone());
                let done = q.execute(&mut *tx).await.map_err(backend("complete"))?;
                if done.rows_affected() == chunk.len() as u64 {
                    continue;
                }
            }
            let sql = format!("{update_sql}{})", placeholders(chunk.len()));
            let q = bind_ids(sqlx::query(AssertSqlSafe(sql)), queue, ids);
            q.execute(&mut *tx).await.map_err(backend("complete"))?;
        }
        for chunk in others.chunks(CHUNK) {
            let derived = vec![
                "SELECT ? AS id, ? AS status, CAST(? AS SIGNED) AS delay_us, ? AS last_error, \
                 CAST(? AS SIGNED) AS uncount";
                chunk.len()
            ]
            .join(" UNION ALL ");
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "UPDATE {t} AS t JOIN ({derived}) AS c ON t.queue = ? AND t.id = c.id \
                 SET t.status = c.status, t.attempts = t.attempts - c.uncount, \
                   t.execute_at = COALESCE(UTC_TIMESTAMP(6) + INTERVAL c.delay_us MICROSECOND, t.execute_at), \
                   t.last_error = COALESCE(c.last_error, t.last_error), \
                   t.lease_owner = IF(c.status = 'scheduled', NULL, t.lease_owner), \
                   t.lease_expires_at = NULL, t.updated_at = UTC_TIMESTAMP(6)"
            )));
            for r in chunk {
                q = q
                    .bind(r.id.as_str())
                    .bind(r.status)
                    .bind(r.delay_us)
                    .bind(r.last_error.as_deref())
                    .bind(r.uncount);
            }
            q.bind(queue.as_str())
                .execute(&mut *tx)
                .await
                .map_err(backend("complete"))?;
        }
        tx.commit().await.map_err(backend("complete"))?;
        Ok(apply
            .into_iter()
            .map(|r| (r.id.clone(), r.status.to_owned()))
            .collect())
    }

    async fn purge_batch(
        pool: &MySqlPool,
        names: &Names,
        cutoff: &Cutoff,
        limit: usize,
        archive: bool,
    ) -> mq_core::Result<u64> {
        let t = &names.table;
        let finished = Self::finished_rows();
        let keep = cutoff.keep_clause(t, &finished);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut tx = pool.begin().await.map_err(backend("purge"))?;
        let seqs: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT seq FROM {t} WHERE {finished} \
         AND updated_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND{keep} \
         ORDER BY updated_at LIMIT ? FOR UPDATE SKIP LOCKED"
        )))
        .bind(micros(cutoff.older_than))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend("purge"))?;
        if !seqs.is_empty() {
            let list = placeholders(seqs.len());
            if archive {
                // The archive has the table's keys: a message id published again after its
                // first run was archived (or a seq reused after a table rebuild) would fail the
                // insert on every pass and stop retention. The latest run replaces the older copy.
                let mut q = sqlx::query(AssertSqlSafe(format!(
                    "REPLACE INTO {} SELECT * FROM {t} WHERE seq IN ({list})",
                    names.archive
                )));
                for s in &seqs {
                    q = q.bind(*s);
                }
                q.execute(&mut *tx).await.map_err(backend("purge"))?;
            }
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {t} WHERE seq IN ({list})"
            )));
            for s in &seqs {
                q = q.bind(*s);
            }
            q.execute(&mut *tx).await.map_err(backend("purge"))?;
        }
        tx.commit().await.map_err(backend("purge"))?;
        Ok(seqs.len() as u64)
    }

    fn stats_now() -> String {
        "UTC_TIMESTAMP(6)".to_owned()
    }

    fn age_ms(then: &str, now: &str) -> String {
        format!("CAST(TIMESTAMPDIFF(MICROSECOND, {then}, {now}) DIV 1000 AS SIGNED)")
    }

    // From UTC_TIMESTAMP, not UNIX_TIMESTAMP(NOW()): the session's time zone (and its
    // daylight-saving hour that happens twice) stays out of it.
    const CLOCK_MS: &'static str = "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', \
        UTC_TIMESTAMP(6)) DIV 1000 AS SIGNED) AS now_ms";
    // No `ON CONFLICT DO NOTHING`, and `INSERT IGNORE` would also turn a value or key that does
    // not fit into a warning: the duplicate key error itself says the record exists.
    const LEASE_CREATE_CONFLICT: &'static str = "";
    // No `RETURNING` on an insert: the new version is kept in the connection's LAST_INSERT_ID,
    // set by the insert's values and again by the update when the record exists.
    const LEASE_BUMP_FIRST: &'static str = "LAST_INSERT_ID(1)";
    const LEASE_BUMP_READ: Option<&'static str> =
        Some("SELECT CAST(LAST_INSERT_ID() AS SIGNED) AS version");

    fn lease_bump_conflict(_table: &str) -> String {
        " ON DUPLICATE KEY UPDATE version = LAST_INSERT_ID(version + 1)".to_owned()
    }

    fn lease_key_text(column: &str) -> String {
        format!("CONVERT({column} USING utf8mb4)")
    }
}

/// Refuses servers without `SKIP LOCKED`.
fn check_version(version: &str) -> Result<(), Error> {
    let nums: Vec<u32> = version
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let v = (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
        nums.get(2).copied().unwrap_or(0),
    );
    let (ok, requirement) = if version.to_ascii_lowercase().contains("mariadb") {
        (
            v >= (10, 6, 0),
            "MariaDB 10.6 or newer is needed for FOR UPDATE SKIP LOCKED",
        )
    } else {
        (
            v >= (8, 0, 1),
            "MySQL 8.0.1 or newer is needed for FOR UPDATE SKIP LOCKED",
        )
    };
    if ok {
        Ok(())
    } else {
        Err(Error::UnsupportedServer {
            database: "mysql",
            version: version.to_owned(),
            requirement,
        })
    }
}

/// Claimable rows, by condition (each `?` is the current time): scheduled past their expiry,
/// processing past their lease, scheduled and due.
const EXPIRED: &str = "status = 'scheduled' AND expires_at <= ?";
const LAPSED: &str = "status = 'processing' AND lease_expires_at <= ?";
const READY: &str =
    "status = 'scheduled' AND execute_at <= ? AND (expires_at IS NULL OR expires_at > ?)";

/// Locks up to `limit` ids of `queue` in `t` whose row meets `cond` (each `?` in it bound to
/// `now`), in `order`, skipping rows other transactions hold.
async fn lock_ids(
    conn: &mut MySqlConnection,
    t: &str,
    queue: &QueueName,
    cond: &str,
    order: &str,
    now: NaiveDateTime,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let sql = format!(
        "SELECT id FROM {t} WHERE queue = ? AND {cond} ORDER BY {order} LIMIT ? FOR UPDATE SKIP LOCKED"
    );
    let mut q = sqlx::query_scalar(AssertSqlSafe(sql)).bind(queue.as_str());
    for _ in 0..cond.matches('?').count() {
        q = q.bind(now);
    }
    q.bind(limit).fetch_all(conn).await
}

/// `n` comma-separated `?` placeholders.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Binds `queue` and then `ids` to `q`, for its `queue = ? AND id IN (...)`.
fn bind_ids<'q, S: AsRef<str>>(
    q: Query<'q, MySql, MySqlArguments>,
    queue: &QueueName,
    ids: impl IntoIterator<Item = S>,
) -> Query<'q, MySql, MySqlArguments> {
    let q = q.bind(queue.as_str());
    ids.into_iter().fold(q, |q, id| q.bind(id.as_ref()))
}

/// Selects the values of `col` (`id` or a key column) of `queue` among `ids` under `sql_head`
/// (no bind parameters of its own but the queue).
async fn select_ids(
    conn: &mut MySqlConnection,
    sql_head: &str,
    col: &str,
    queue: &QueueName,
    ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    let mut out = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!("{sql_head} AND {col} IN ({})", placeholders(chunk.len()));
        let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql)).bind(queue.as_str());
        for id in chunk {
            q = q.bind(id.as_str());
        }
        out.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

async fn insert_chunk(
    conn: &mut MySqlConnection,
    t: &str,
    queue: &QueueName,
    rows: &[InsertRow],
) -> Result<(), sqlx::Error> {
    // Due and expiry times are offsets the server adds to its own clock.
    let row = "(?, ?, ?, ?, 'scheduled', UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
        UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, 0, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), ?, ?, \
        ?, ?, ?)";
    let values = vec![row; rows.len()].join(", ");
    let sql = format!(
        "INSERT INTO {t} (queue, id, message_type, payload, status, execute_at, expires_at, attempts, \
           max_attempts, retry_delay_ms, created_at, updated_at, partition_key, metadata, \
           priority, unique_key, unique_window_ms) VALUES {values}"
    );
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for r in rows {
        q = q
            .bind(queue.as_str())
            .bind(r.id.as_str())
            .bind(r.message_type.as_str())
            .bind(r.payload.as_str())
            .bind(r.execute_in_us)
            .bind(r.expires_in_us)
            .bind(r.max_attempts)
            .bind(r.retry_delay_ms)
            .bind(r.partition_key.as_deref())
            .bind(r.metadata.as_deref())
            .bind(r.priority)
            .bind(r.unique_key.as_deref())
            .bind(r.unique_window_ms);
    }
    q.execute(&mut *conn).await.map(|_| ())
}

/// One insert attempt: finds the ids already stored, inserts the others.
async fn try_insert(
    pool: &MySqlPool,
    t: &str,
    queue: &QueueName,
    messages: &[Message],
) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<String> = messages.iter().map(|m| m.id.as_str().to_owned()).collect();
    let existing: HashSet<String> = select_ids(
        &mut tx,
        &format!("SELECT id FROM {t} WHERE queue = ?"),
        "id",
        queue,
        &ids,
    )
    .await?
    .into_iter()
    .collect();
    // Keys held by a waiting or running message are skipped like stored ids (the caller names
    // the holder).
    let keys: Vec<String> = messages
        .iter()
        .filter_map(|m| m.unique_key.clone())
        .collect();
    let held_keys: HashSet<String> = if keys.is_empty() {
        HashSet::new()
    } else {
        select_ids(
            &mut tx,
            &format!("SELECT unique_held FROM {t} WHERE queue = ? AND unique_held IS NOT NULL"),
            "unique_held",
            queue,
            &keys,
        )
        .await?
        .into_iter()
        .collect()
    };
    let mut seen = HashSet::with_capacity(messages.len());
    let mut seen_keys = HashSet::new();
    let fresh: Vec<InsertRow> = messages
        .iter()
        .filter(|m| {
            !existing.contains(m.id.as_str())
                && m.unique_key
                    .as_deref()
                    .is_none_or(|k| !held_keys.contains(k) && seen_keys.insert(k))
                && seen.insert(m.id.as_str())
        })
        .map(InsertRow::of)
        .collect();
    for range in insert_chunks(&fresh, CHUNK) {
        insert_chunk(&mut tx, t, queue, &fresh[range]).await?;
    }
    tx.commit().await?;
    Ok(fresh.into_iter().map(|r| r.id).collect())
}

/// How many times a publish is tried when concurrent publishers keep taking its ids or keys
/// between its check and its insert.
const INSERT_TRIES: usize = 8;

/// Racing inserts into the unique key index can deadlock; the loser is rolled back whole.
fn is_deadlock(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("40001"))
}

fn is_duplicate_key(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23000"))
}

/// Locks the messages still held under `claims` by `owner` with an unexpired lease; returns
/// the held ids.
async fn held(
    conn: &mut MySqlConnection,
    t: &str,
    queue: &QueueName,
    owner: &str,
    claims: &[(String, i32)],
) -> Result<HashSet<String>, sqlx::Error> {
    let mut out = HashSet::with_capacity(claims.len());
    for chunk in claims.chunks(CHUNK) {
        let sql = format!(
            "SELECT id, attempts FROM {t} WHERE queue = ? AND status = 'processing' AND lease_owner = ? \
             AND lease_expires_at > UTC_TIMESTAMP(6) AND id IN ({}) FOR UPDATE",
            placeholders(chunk.len())
        );
        let mut q = sqlx::query_as::<_, (String, i32)>(AssertSqlSafe(sql))
            .bind(queue.as_str())
            .bind(owner);
        for (id, _) in chunk {
            q = q.bind(id.as_str());
        }
        let rows = q.fetch_all(&mut *conn).await?;
        let want: std::collections::HashMap<&str, i32> =
            chunk.iter().map(|(id, a)| (id.as_str(), *a)).collect();
        out.extend(
            rows.into_iter()
                .filter(|(id, a)| want.get(id.as_str()) == Some(a))
                .map(|(id, _)| id),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::check_version;

    #[test]
    fn versions() {
        assert!(check_version("10.11.6-MariaDB-0+deb12u1").is_ok());
        assert!(check_version("10.6.0-MariaDB").is_ok());
        assert!(check_version("10.5.23-MariaDB").is_err());
        assert!(check_version("8.0.36").is_ok());
        assert!(check_version("5.7.44-log").is_err());
        let e = check_version("10.4.1-MariaDB").unwrap_err().to_string();
        assert!(e.contains("10.6"), "{e}");
    }
}
