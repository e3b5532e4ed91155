//! SQLite: one write transaction (`BEGIN IMMEDIATE`) per claim with `UPDATE ... RETURNING`;
//! timestamps are integer microseconds; the embedded default.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mq_core::backend::Claim;
use mq_core::{Message, QueueName};
use sqlx::query::QueryAs;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, FromRow, Sqlite, SqliteConnection, SqlitePool};

use super::{CHUNK, Dialect};
use crate::error::backend;
use crate::options::SqlOptions;
use crate::retention::Cutoff;
use crate::store::{
    COLS, CompletionRow, InsertRow, Names, RawRow, SqlStore, decode, insert_chunks, micros,
};

super::aliases!(
    Sqlite, "SQLite", feature "sqlite", pool SqlitePool:
    SqliteQueue, SqliteCheckpointStore, SqliteDeadLetterStore, SqliteLeaseTable
);

impl Dialect for Sqlite {
    const KIND: &'static str = "sqlite";
    super::migrations!("sqlite");
    const GREATEST_LEAST: (&'static str, &'static str) = ("MAX", "MIN");
    const TRANSACTIONAL_DDL: bool = true;
    // One writer at a time: a row read in the transaction cannot change before the commit.
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const LOCK_ROW: &'static str = "";
    const TABLE_EXISTS: &'static str =
        "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = ";

    type Time = i64;

    fn to_time(t: DateTime<Utc>) -> i64 {
        t.timestamp_micros()
    }
    fn from_time(t: i64) -> Result<DateTime<Utc>, sqlx::Error> {
        ts(t)
    }
    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn connect_pool(url: &str, options: &SqlOptions) -> Result<SqlitePool, sqlx::Error> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(options.get_connect_timeout().max(Duration::from_secs(5)));
        SqlitePoolOptions::new()
            .max_connections(options.get_max_connections())
            .acquire_timeout(options.get_connect_timeout())
            .connect_with(opts)
            .await
    }

    async fn insert(
        store: &SqlStore<Self>,
        queue: &QueueName,
        messages: &[Message],
    ) -> mq_core::Result<Vec<String>> {
        write(&store.pool, "publish", async |tx| {
            let rows: Vec<InsertRow> = messages.iter().map(InsertRow::of).collect();
            let mut inserted = Vec::with_capacity(rows.len());
            for range in insert_chunks(&rows, CHUNK) {
                inserted.extend(insert_chunk(tx, &store.names.table, queue, &rows[range]).await?);
            }
            Ok(inserted)
        })
        .await
    }

    async fn claim(
        store: &SqlStore<Self>,
        queue: &QueueName,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> mq_core::Result<(Vec<RawRow>, Vec<RawRow>)> {
        let t = &store.names.table;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let expire = format!(
            "UPDATE {t} SET status = 'expired', updated_at = ?1 WHERE seq IN ( \
               SELECT seq FROM {t} WHERE queue = ?2 AND status = 'scheduled' \
               AND expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?3) \
             RETURNING {COLS}"
        );
        let take = format!(
            "UPDATE {t} SET status = 'processing', lease_owner = ?4, lease_expires_at = ?1 + ?5, \
               attempts = attempts + 1, processing_started_at = ?1, updated_at = ?1 \
             WHERE seq IN (SELECT seq FROM ( \
               SELECT seq FROM (SELECT seq FROM {t} WHERE queue = ?2 AND status = 'processing' \
                 AND lease_expires_at <= ?1 ORDER BY lease_expires_at LIMIT ?3) \
               UNION ALL \
               SELECT seq FROM (SELECT seq FROM {t} WHERE queue = ?2 AND status = 'scheduled' \
                 AND execute_at <= ?1 AND (expires_at IS NULL OR expires_at > ?1) \
                 ORDER BY priority DESC, execute_at, seq LIMIT ?3) \
             ) LIMIT ?3) \
               AND NOT EXISTS (SELECT 1 FROM {p} WHERE queue = ?2) \
             RETURNING {COLS}",
            p = store.names.paused
        );
        let (claimed, expired) = write(&store.pool, "claim", async |tx| {
            let now = now_micros();
            let expired = sqlx::query(AssertSqlSafe(expire))
                .bind(now)
                .bind(queue.as_str())
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            let claimed = sqlx::query(AssertSqlSafe(take))
                .bind(now)
                .bind(queue.as_str())
                .bind(limit)
                .bind(owner)
                .bind(micros(lease))
                .fetch_all(&mut *tx)
                .await?;
            Ok((claimed, expired))
        })
        .await?;
        Ok((decode_all(&claimed)?, decode_all(&expired)?))
    }

    async fn renew(
        store: &SqlStore<Self>,
        queue: &QueueName,
        owner: &str,
        claims: &[Claim],
        lease: Duration,
    ) -> mq_core::Result<Vec<String>> {
        let t = &store.names.table;
        write(&store.pool, "renew", async |tx| {
            let now = now_micros();
            let sql = |values: &str| renew_sql(t, values);
            let kept: Vec<(String,)> = per_chunk(
                tx,
                claims,
                "(?, ?)",
                sql,
                |q, c| q.bind(c.id.as_str().to_owned()).bind(i64::from(c.attempt)),
                |q| {
                    let lease_end = now.saturating_add(micros(lease));
                    q.bind(queue.as_str()).bind(owner).bind(now).bind(lease_end)
                },
            )
            .await?;
            Ok(kept.into_iter().map(|(id,)| id).collect())
        })
        .await
    }

    async fn complete(
        store: &SqlStore<Self>,
        queue: &QueueName,
        owner: &str,
        rows: Vec<CompletionRow>,
    ) -> mq_core::Result<Vec<(String, String)>> {
        let t = &store.names.table;
        write(&store.pool, "complete", async |tx| {
            let mut applied = Vec::with_capacity(rows.len());
            let now = now_micros();
            let (acks, rows): (Vec<_>, Vec<_>) = rows
                .into_iter()
                .partition(|r| store.options.get_delete_on_ack() && r.status == "executed");
            let deleted: Vec<(String,)> = per_chunk(
                tx,
                &acks,
                "(?, ?)",
                |values| delete_acked_sql(t, values),
                |q, r| q.bind(r.id.clone()).bind(i64::from(r.attempt)),
                |q| q.bind(queue.as_str()).bind(owner).bind(now),
            )
            .await?;
            // A message whose unique key has a window is kept (as executed) so the window can
            // be read: it goes with the updates.
            let deleted: std::collections::HashSet<String> =
                deleted.into_iter().map(|(id,)| id).collect();
            let (gone, kept): (Vec<_>, Vec<_>) =
                acks.into_iter().partition(|r| deleted.contains(&r.id));
            let mut rows = rows;
            rows.extend(kept);
            applied.extend(gone.into_iter().map(|r| (r.id, "executed".to_owned())));
            let updated: Vec<(String, String)> = per_chunk(
                tx,
                &rows,
                "(?, ?, ?, ?, ?, ?)",
                |values| complete_sql(t, values),
                |q, r| {
                    q.bind(r.id.clone())
                        .bind(i64::from(r.attempt))
                        .bind(r.status)
                        .bind(r.execute_at.map(|d| d.timestamp_micros()))
                        .bind(r.last_error.clone())
                        .bind(r.uncount)
                },
                |q| q.bind(queue.as_str()).bind(owner).bind(now).bind(now),
            )
            .await?;
            applied.extend(updated);
            Ok(applied)
        })
        .await
    }

    async fn purge_batch(
        pool: &SqlitePool,
        names: &Names,
        cutoff: &Cutoff,
        limit: usize,
        archive: bool,
    ) -> mq_core::Result<u64> {
        let t = &names.table;
        let finished = Self::finished_rows();
        let keep = cutoff.keep_clause(t, &finished);
        let pick = format!(
            "SELECT seq FROM {t} WHERE {finished} AND updated_at < ?1{keep} ORDER BY updated_at LIMIT ?2"
        );
        let batch = i64::try_from(limit).unwrap_or(i64::MAX);
        let cutoff = now_micros().saturating_sub(micros(cutoff.older_than));
        write(pool, "purge", async |tx| {
            if archive {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {} SELECT * FROM {t} WHERE seq IN ({pick})",
                    names.archive
                )))
                .bind(cutoff)
                .bind(batch)
                .execute(&mut *tx)
                .await?;
            }
            let n = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {t} WHERE seq IN ({pick})"
            )))
            .bind(cutoff)
            .bind(batch)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            Ok(n)
        })
        .await
    }

    fn stats_now() -> String {
        // SQLite keeps times as Unix microseconds; the clock is this process's, as for claims.
        now_micros().to_string()
    }

    fn age_ms(then: &str, now: &str) -> String {
        format!("({now} - {then}) / 1000")
    }

    // SQLite's 'now' is kept in whole milliseconds of the Julian day; rounding undoes the
    // floating-point error of turning it back into Unix time.
    const CLOCK_MS: &'static str = "SELECT CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) \
        AS INTEGER) AS now_ms";
}

/// `m(seq{extra})`: the rows a batch write may change, each claim of its values
/// `c(id, attempt, ...)` whose row is still that attempt, processing under the owner's unexpired
/// lease (the fence), with `also` as a further condition on the row `x`. Binds: the queue, the
/// owner, the current time.
///
/// The claims drive the lookup (`CROSS JOIN` keeps that order) through the primary key, and the
/// write finds its rows by `seq`: left to itself, the planner of a database without statistics
/// walks every held row and scans the values for each, quadratic in the batch.
fn fenced(t: &str, extra: &str, also: &str) -> String {
    format!(
        "m AS MATERIALIZED (SELECT x.seq AS seq{extra} FROM c CROSS JOIN {t} AS x \
           ON x.queue = ? AND x.id = c.id AND x.attempts = c.attempt \
         WHERE x.status = 'processing' AND x.lease_owner = ? AND x.lease_expires_at > ?{also})"
    )
}

/// Extends the leases of the claims in `values` (`(id, attempt)` rows) by the bound end.
fn renew_sql(t: &str, values: &str) -> String {
    format!(
        "WITH c(id, attempt) AS (VALUES {values}), {m} \
         UPDATE {t} AS t SET lease_expires_at = ? WHERE t.seq IN (SELECT seq FROM m) RETURNING id",
        m = fenced(t, "", "")
    )
}

/// Deletes the acknowledged claims in `values` (`(id, attempt)` rows), except those whose
/// unique key has a window.
fn delete_acked_sql(t: &str, values: &str) -> String {
    format!(
        "WITH c(id, attempt) AS (VALUES {values}), {m} \
         DELETE FROM {t} WHERE seq IN (SELECT seq FROM m) RETURNING id",
        m = fenced(t, "", " AND x.unique_window_ms IS NULL")
    )
}

/// Applies the completions in `values` (`(id, attempt, status, execute_at, last_error,
/// uncount)` rows); the bound time becomes `updated_at`.
fn complete_sql(t: &str, values: &str) -> String {
    format!(
        "WITH c(id, attempt, status, execute_at, last_error, uncount) AS (VALUES {values}), {m} \
         UPDATE {t} AS t SET status = m.status, attempts = t.attempts - m.uncount, \
           execute_at = COALESCE(m.execute_at, t.execute_at), \
           last_error = COALESCE(m.last_error, t.last_error), \
           lease_owner = CASE WHEN m.status = 'scheduled' THEN NULL ELSE t.lease_owner END, \
           lease_expires_at = NULL, updated_at = ? \
         FROM m WHERE t.seq = m.seq AND t.seq IN (SELECT seq FROM m) RETURNING id, status",
        m = fenced(
            t,
            ", c.status AS status, c.execute_at AS execute_at, c.last_error AS last_error, \
             c.uncount AS uncount",
            ""
        )
    )
}

/// A batch statement returning rows of `O`.
type Batch<'q, O> = QueryAs<'q, Sqlite, O, SqliteArguments>;

/// Runs one statement per chunk of `items` on `tx` and collects the rows they return: `sql`
/// gets the `VALUES` list (`row`, an item's placeholders, once per item), `bind` binds an
/// item's values, `tail` the parameters after the list.
async fn per_chunk<'q, I, O>(
    tx: &mut SqliteConnection,
    items: &[I],
    row: &str,
    sql: impl Fn(&str) -> String,
    bind: impl Fn(Batch<'q, O>, &I) -> Batch<'q, O>,
    tail: impl Fn(Batch<'q, O>) -> Batch<'q, O>,
) -> Result<Vec<O>, sqlx::Error>
where
    O: Send + Unpin + for<'r> FromRow<'r, SqliteRow>,
{
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(CHUNK) {
        let values = vec![row; chunk.len()].join(", ");
        let q = sqlx::query_as(AssertSqlSafe(sql(&values)));
        let q = chunk.iter().fold(q, &bind);
        out.extend(tail(q).fetch_all(&mut *tx).await?);
    }
    Ok(out)
}

/// Runs `work` in one write transaction, named `op` in errors. `BEGIN IMMEDIATE` takes
/// SQLite's single write lock at once, so nothing read in the transaction changes before the
/// commit, and a busy database is waited for (`busy_timeout`) instead of failing mid-way.
async fn write<T>(
    pool: &SqlitePool,
    op: &'static str,
    work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
) -> mq_core::Result<T> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(backend(op))?;
    let out = work(&mut *tx).await.map_err(backend(op))?;
    tx.commit().await.map_err(backend(op))?;
    Ok(out)
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn ts(v: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| sqlx::Error::Decode(format!("timestamp {v} out of range").into()))
}

fn decode_all(rows: &[SqliteRow]) -> mq_core::Result<Vec<RawRow>> {
    rows.iter()
        .map(|r| decode::<Sqlite>(r).map_err(backend("claim")))
        .collect()
}

async fn insert_chunk(
    conn: &mut SqliteConnection,
    t: &str,
    queue: &QueueName,
    rows: &[InsertRow],
) -> Result<Vec<String>, sqlx::Error> {
    let row = "(?, ?, ?, ?, 'scheduled', ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    let values = vec![row; rows.len()].join(", ");
    // A conflict on the id or on a held unique key skips the message; the caller tells which.
    let sql = format!(
        "INSERT INTO {t} (queue, id, message_type, payload, status, execute_at, expires_at, attempts, \
           max_attempts, retry_delay_ms, created_at, updated_at, partition_key, metadata, \
           priority, unique_key, unique_window_ms) \
         VALUES {values} ON CONFLICT DO NOTHING RETURNING id"
    );
    let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
    for r in rows {
        q = q
            .bind(queue.as_str())
            .bind(r.id.as_str())
            .bind(r.message_type.as_str())
            .bind(r.payload.as_str())
            .bind(r.execute_at.timestamp_micros())
            .bind(r.expires_at.map(|d| d.timestamp_micros()))
            .bind(r.max_attempts)
            .bind(r.retry_delay_ms)
            .bind(r.created_at.timestamp_micros())
            .bind(r.created_at.timestamp_micros())
            .bind(r.partition_key.as_deref())
            .bind(r.metadata.as_deref())
            .bind(r.priority)
            .bind(r.unique_key.as_deref())
            .bind(r.unique_window_ms);
    }
    q.fetch_all(&mut *conn).await
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;

    /// The query plan of `sql` on `pool`, one line a step.
    async fn plan(pool: &SqlitePool, sql: &str) -> Vec<String> {
        sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
            .fetch_all(pool)
            .await
            .expect("explain")
            .iter()
            .map(|r| r.try_get::<String, _>(3).expect("detail"))
            .collect()
    }

    /// A fresh database has no statistics. Each batch write must still find its rows through
    /// the claims' primary key, never walk the held messages and scan the values for each:
    /// that plan costs the square of the batch size on every acknowledgement and renewal.
    #[tokio::test]
    async fn batch_writes_look_claims_up_by_key_without_statistics() {
        let store = SqlStore::<Sqlite>::connect(
            "sqlite::memory:",
            SqlOptions::default().max_connections(1),
        )
        .await
        .expect("store");
        let t = store.names.table.clone();
        let key = format!("USING INDEX sqlite_autoindex_{t}_1 (queue=? AND id=?)");
        for (name, sql) in [
            ("renew", renew_sql(&t, &vec!["(?, ?)"; 500].join(", "))),
            (
                "delete",
                delete_acked_sql(&t, &vec!["(?, ?)"; 500].join(", ")),
            ),
            (
                "complete",
                complete_sql(&t, &vec!["(?, ?, ?, ?, ?, ?)"; 500].join(", ")),
            ),
        ] {
            let steps = plan(&store.pool, &sql).await;
            assert!(
                steps
                    .iter()
                    .any(|s| s.starts_with("SEARCH") && s.ends_with(&key)),
                "{name}: claims not looked up by key: {steps:#?}"
            );
            assert!(
                !steps
                    .iter()
                    .any(|s| s.contains("idx_leased") || s == &format!("SCAN {t}")),
                "{name}: walks the table or the held messages: {steps:#?}"
            );
        }
        store.close().await;
    }
}
