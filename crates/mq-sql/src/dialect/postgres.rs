//! PostgreSQL: `FOR UPDATE SKIP LOCKED` claims in one statement, `unnest` batch writes,
//! `LISTEN/NOTIFY` wake-up and publishing inside the caller's transaction (`publish_in_tx`).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mq_core::backend::Claim;
use mq_core::{Message, NewMessage, PublishFailure, PublishReport, QueueName};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Row};
use tokio_util::sync::CancellationToken;

use super::Dialect;
use crate::error::backend;
use crate::options::SqlOptions;
use crate::queue::SqlQueue;
use crate::retention::Cutoff;
use crate::store::{
    COLS, CompletionRow, InsertRow, Names, RawRow, SqlStore, decode, insert_chunks, match_inserted,
    micros,
};

super::aliases!(
    Postgres, "PostgreSQL", feature "postgres", pool PgPool:
    PgQueue, PgCheckpointStore, PgDeadLetterStore, PgLeaseTable
);

/// The most rows one insert statement carries.
const INSERT_ROWS: usize = 5000;

// A claim leaves `updated_at` alone (an index reads it, so writing it would cost the claim its
// heap-only update); the time a message last changed is the later of it and the claim's.
const T_COLS: &str = "t.queue, t.id, t.message_type, t.payload, t.status, t.execute_at, t.expires_at, \
    t.attempts, t.max_attempts, t.retry_delay_ms, t.created_at, \
    GREATEST(t.updated_at, t.processing_started_at) AS updated_at, t.processing_started_at, \
    t.partition_key, t.metadata, t.seq, t.priority, t.unique_key, t.unique_window_ms";

// Plan shaping. These statements must stay fast on a fresh table without statistics and under
// generic (prepared) plans, so none may depend on the planner guessing row counts:
// - rows are picked under `FOR UPDATE SKIP LOCKED` by their partial index, then updated by
//   `ctid = ANY(ARRAY(...))`, which is always a TID scan (the locks keep the ctids stable);
// - the ready index's predicate is an equality (`live = 1`): without statistics the planner
//   takes it as selective and reads the index in order, where a boolean predicate made it
//   sort the whole queue on every claim;
// - completions and renewals look each claim up by primary key in a `LATERAL ... OFFSET 0`
//   subquery (the status and lease tests are written as expressions so they cannot lure the
//   planner onto another index), then update by ctid. The final quals (ctid,
//   status, owner) are rechecked on the latest row version if the row changed meanwhile, and
//   any change gives the row a new ctid, so the fence holds. Rows that take the same values
//   are changed by ctid alone: joining the looked-up claims again on ctid lets the planner test
//   each row against the whole ctid list, quadratic in the batch.
impl Dialect for Postgres {
    const KIND: &'static str = "postgres";
    super::migrations!("postgres", "0004_heap_only_claims.sql");
    const TRANSACTIONAL_DDL: bool = true;
    const LIVE_ROWS: &'static str = " AND live = 1";
    const BEGIN_WRITE: &'static str = "BEGIN";
    const LOCK_ROW: &'static str = " FOR UPDATE";
    const TABLE_EXISTS: &'static str = "SELECT COUNT(*) AS n FROM information_schema.tables \
        WHERE table_schema = ANY(current_schemas(false)) AND table_name = ";

    type Time = DateTime<Utc>;

    fn to_time(t: DateTime<Utc>) -> DateTime<Utc> {
        t
    }
    fn from_time(t: DateTime<Utc>) -> Result<DateTime<Utc>, sqlx::Error> {
        Ok(t)
    }
    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }
    fn schema_lock(key: i64) -> Option<String> {
        // Concurrent CREATE ... IF NOT EXISTS can still collide in the catalog: serialize them.
        Some(format!("SELECT pg_advisory_xact_lock({key})"))
    }

    async fn connect_pool(url: &str, options: &SqlOptions) -> Result<PgPool, sqlx::Error> {
        PgPoolOptions::new()
            .max_connections(options.get_max_connections())
            .acquire_timeout(options.get_connect_timeout())
            .connect_with(PgConnectOptions::from_str(url)?)
            .await
    }

    fn start(store: &SqlStore<Self>) {
        if store.options.get_notify() {
            store.start_listener();
        }
    }

    fn check_message(message: &Message) -> mq_core::Result<()> {
        // jsonb refuses a NUL anywhere in a string; refuse the one message, not the whole publish.
        let refuse = |field: &'static str| mq_core::Error::InvalidMessage {
            id: message.id.clone(),
            field,
            reason: "contains a NUL character, which PostgreSQL jsonb cannot store".to_owned(),
        };
        if json_has_nul(&message.payload) {
            return Err(refuse("payload"));
        }
        if message
            .metadata
            .extra
            .iter()
            .any(|(k, v)| k.contains('\0') || json_has_nul(v))
        {
            return Err(refuse("metadata"));
        }
        Ok(())
    }

    async fn insert(
        store: &SqlStore<Self>,
        queue: &QueueName,
        messages: &[Message],
    ) -> mq_core::Result<Vec<String>> {
        let rows: Vec<InsertRow> = messages.iter().map(InsertRow::of).collect();
        let mut tries = 0;
        loop {
            tries += 1;
            match insert_rows(store, queue, &rows).await {
                // Publishers racing on the same unique keys in different orders can deadlock
                // on the key index; the loser was rolled back whole and tries again.
                Err(e) if tries < INSERT_TRIES && is_deadlock(&e) => {
                    tracing::debug!(%queue, error = %e, "mq-sql: publish deadlocked; retrying");
                }
                other => return other,
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
        let p = &store.names.paused;
        let sql = format!(
            "WITH exp_pick AS ( \
               SELECT ctid FROM {t} WHERE queue = $1 AND live = 1 AND status = 'scheduled' \
                 AND expires_at <= now() \
               LIMIT $2 FOR UPDATE SKIP LOCKED \
             ), exp AS ( \
               UPDATE {t} t SET status = 'expired', updated_at = now() \
               WHERE t.ctid = ANY(ARRAY(SELECT ctid FROM exp_pick)) RETURNING {T_COLS} \
             ), pick AS ( \
               SELECT ctid FROM {t} WHERE queue = $1 AND live = 1 AND execute_at <= now() \
                 AND CASE WHEN status = 'scheduled' THEN expires_at IS NULL OR expires_at > now() \
                   ELSE lease_expires_at <= now() END \
                 AND NOT EXISTS (SELECT 1 FROM {p} WHERE queue = $1) \
               ORDER BY priority DESC, execute_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED \
             ), cl AS ( \
               UPDATE {t} t SET status = 'processing', lease_owner = $3, \
                 lease_expires_at = now() + ($4::float8 * interval '1 microsecond'), \
                 attempts = t.attempts + 1, processing_started_at = now() \
               WHERE t.ctid = ANY(ARRAY(SELECT ctid FROM pick)) \
               RETURNING {T_COLS} \
             ) \
             SELECT true AS claimed, {COLS} FROM cl UNION ALL SELECT false AS claimed, {COLS} FROM exp"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(queue.as_str())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(owner)
            .bind(micros(lease) as f64)
            .fetch_all(&store.pool)
            .await
            .map_err(backend("claim"))?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut expired = Vec::new();
        for row in &rows {
            let is_claim: bool = row.try_get("claimed").map_err(backend("claim"))?;
            let raw = decode::<Postgres>(row).map_err(backend("claim"))?;
            if is_claim {
                claimed.push(raw);
            } else {
                expired.push(raw);
            }
        }
        Ok((claimed, expired))
    }

    // A renewal also moves the message's due time to its new lease expiry: the claim reads the
    // ready index past due times, so a message that outlives its first renewal leaves the part
    // the claim reads (at the cost of one index entry per renewal) and comes back into it only
    // when its lease runs out. Claims then skip only the messages claimed in the last part of
    // a lease, however many long ones are running.
    async fn renew(
        store: &SqlStore<Self>,
        queue: &QueueName,
        owner: &str,
        claims: &[Claim],
        lease: Duration,
    ) -> mq_core::Result<Vec<String>> {
        let t = &store.names.table;
        let ids: Vec<&str> = claims.iter().map(|c| c.id.as_str()).collect();
        let attempts: Vec<i32> = claims
            .iter()
            .map(|c| i32::try_from(c.attempt).unwrap_or(i32::MAX))
            .collect();
        let sql = format!(
            "WITH c AS MATERIALIZED ( \
               SELECT x.tid, c.attempt FROM unnest($2::text[], $3::int4[]) AS c(id, attempt) \
               CROSS JOIN LATERAL (SELECT ctid AS tid FROM {t} x WHERE x.queue = $1 AND x.id = c.id \
                 AND x.attempts = c.attempt AND x.status || '' = 'processing' AND x.lease_owner = $4 \
                 AND x.lease_expires_at - now() > interval '0' OFFSET 0) x \
             ) \
             UPDATE {t} t SET lease_expires_at = now() + ($5::float8 * interval '1 microsecond'), \
               execute_at = now() + ($5::float8 * interval '1 microsecond') \
             WHERE t.ctid = ANY(ARRAY(SELECT tid FROM c)) \
               AND t.status || '' = 'processing' AND t.lease_owner = $4 \
             RETURNING t.id"
        );
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(queue.as_str())
            .bind(&ids)
            .bind(&attempts)
            .bind(owner)
            .bind(micros(lease) as f64)
            .fetch_all(&store.pool)
            .await
            .map_err(backend("renew"))
    }

    async fn complete(
        store: &SqlStore<Self>,
        queue: &QueueName,
        owner: &str,
        rows: Vec<CompletionRow>,
    ) -> mq_core::Result<Vec<(String, String)>> {
        let t = &store.names.table;
        // One array per column, for `unnest`. Under delete_on_ack an acknowledged message whose
        // unique key has a window is kept (as executed) so the window can be read.
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempt).collect();
        let statuses: Vec<&str> = rows.iter().map(|r| r.status).collect();
        // Due times travel as delays the server adds to its own clock.
        let delays: Vec<Option<i64>> = rows.iter().map(|r| r.delay_us).collect();
        let errors: Vec<Option<&str>> = rows.iter().map(|r| r.last_error.as_deref()).collect();
        let uncount: Vec<i32> = rows.iter().map(|r| r.uncount).collect();
        // Each claim is looked up once (`c`) and sorted into how it is applied: `drop` (an
        // acknowledgement under delete_on_ack), `ack` (an acknowledgement whose row is kept) or
        // the general update with per-row values. The first two touch their rows by ctid alone,
        // without joining `c` again: a row changed since `c` read it has a new ctid, so the
        // recheck on its latest version fails and the fence holds without the attempt test.
        let sql = format!(
            "WITH c AS MATERIALIZED ( \
               SELECT x.tid, c.attempt, c.status, c.delay_us, c.last_error, c.uncount, \
                 CASE WHEN c.status = 'executed' AND $8 AND x.win IS NULL THEN 'drop' \
                      WHEN c.status = 'executed' AND c.delay_us IS NULL AND c.last_error IS NULL \
                        AND c.uncount = 0 THEN 'ack' \
                      ELSE 'set' END AS how \
               FROM unnest($2::text[], $3::int4[], $4::text[], $5::int8[], $6::text[], $9::int4[]) \
                 AS c(id, attempt, status, delay_us, last_error, uncount) \
               CROSS JOIN LATERAL (SELECT ctid AS tid, unique_window_ms AS win FROM {t} x \
                 WHERE x.queue = $1 AND x.id = c.id \
                 AND x.attempts = c.attempt AND x.status || '' = 'processing' AND x.lease_owner = $7 \
                 AND x.lease_expires_at - now() > interval '0' OFFSET 0) x \
             ), del AS ( \
               DELETE FROM {t} t \
               WHERE t.ctid = ANY(ARRAY(SELECT tid FROM c WHERE how = 'drop')) \
                 AND t.status || '' = 'processing' AND t.lease_owner = $7 \
               RETURNING t.id, 'executed'::text AS status \
             ), ack AS ( \
               UPDATE {t} t SET status = 'executed', lease_expires_at = NULL, updated_at = now() \
               WHERE t.ctid = ANY(ARRAY(SELECT tid FROM c WHERE how = 'ack')) \
                 AND t.status || '' = 'processing' AND t.lease_owner = $7 \
               RETURNING t.id, t.status \
             ), upd AS ( \
               UPDATE {t} t SET status = c.status, \
                 execute_at = COALESCE(now() + c.delay_us * interval '1 microsecond', t.execute_at), \
                 attempts = t.attempts - c.uncount, \
                 last_error = COALESCE(c.last_error, t.last_error), \
                 lease_owner = CASE WHEN c.status = 'scheduled' THEN NULL ELSE t.lease_owner END, \
                 lease_expires_at = NULL, updated_at = now() \
               FROM c \
               WHERE c.how = 'set' \
                 AND t.ctid = ANY(ARRAY(SELECT tid FROM c WHERE how = 'set')) \
                 AND t.ctid = c.tid AND t.attempts = c.attempt AND t.status || '' = 'processing' \
                 AND t.lease_owner = $7 \
               RETURNING t.id, t.status \
             ) \
             SELECT id, status FROM del UNION ALL SELECT id, status FROM ack \
             UNION ALL SELECT id, status FROM upd"
        );
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(queue.as_str())
            .bind(&ids)
            .bind(&attempts)
            .bind(&statuses)
            .bind(&delays)
            .bind(&errors)
            .bind(owner)
            .bind(store.options.get_delete_on_ack())
            .bind(&uncount)
            .fetch_all(&store.pool)
            .await
            .map_err(backend("complete"))
    }

    async fn purge_batch(
        pool: &PgPool,
        names: &Names,
        cutoff: &Cutoff,
        limit: usize,
        archive: bool,
    ) -> mq_core::Result<u64> {
        let t = &names.table;
        let finished = Self::finished_rows();
        let keep = cutoff.keep_clause(t, &finished);
        let delete = format!(
            "DELETE FROM {t} WHERE (queue, id) IN (SELECT queue, id FROM {t} \
               WHERE {finished} AND updated_at < now() - ($1::float8 * interval '1 microsecond'){keep} \
               LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING *"
        );
        let sql = if archive {
            format!(
                "WITH d AS ({delete}) INSERT INTO {} SELECT * FROM d",
                names.archive
            )
        } else {
            format!("WITH d AS ({delete}) SELECT count(*) FROM d")
        };
        let q = sqlx::query(AssertSqlSafe(sql))
            .bind(micros(cutoff.older_than) as f64)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        if archive {
            Ok(q.execute(pool)
                .await
                .map_err(backend("purge"))?
                .rows_affected())
        } else {
            let row = q.fetch_one(pool).await.map_err(backend("purge"))?;
            Ok(u64::try_from(row.try_get::<i64, _>(0).map_err(backend("purge"))?).unwrap_or(0))
        }
    }

    fn read_json(row: &PgRow, col: &str) -> Result<Option<Value>, sqlx::Error> {
        Ok(row
            .try_get::<Option<sqlx::types::Json<Value>>, _>(col)?
            .map(|j| j.0))
    }

    fn stats_now() -> String {
        "now()".to_owned()
    }

    // `now()` is the time the transaction began: a lease that expired since would pass.
    fn statement_now() -> String {
        "statement_timestamp()".to_owned()
    }

    fn age_ms(then: &str, now: &str) -> String {
        format!("CAST(EXTRACT(EPOCH FROM ({now} - {then})) * 1000 AS BIGINT)")
    }

    // The retention index covers the rows no longer `live`; the status test keeps to the
    // statuses the other databases remove.
    fn finished_rows() -> String {
        format!("live IS NULL AND {}", crate::store::FINISHED_STATUS)
    }

    // `clock_timestamp()`: `now()` would be the start of the caller's transaction.
    const CLOCK_MS: &'static str =
        "SELECT CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT) AS now_ms";
}

impl SqlStore<Postgres> {
    /// True while the LISTEN/NOTIFY listener is subscribed, so a publish wakes idle consumers
    /// at once (otherwise they find new messages at their next poll).
    pub fn is_listening(&self) -> bool {
        self.wake.1.load(std::sync::atomic::Ordering::Acquire)
    }

    fn start_listener(&self) {
        let pool = self.pool.clone();
        let channel = self.names.channel.clone();
        let wake = self.wake.clone();
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let listener = tokio::select! {
                    () = cancel.cancelled() => return,
                    l = PgListener::connect_with(&pool) => l,
                };
                let mut listener = match listener {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "mq-sql: notification listener cannot connect; retrying");
                        if !back_off(&cancel, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                };
                if let Err(e) = listener.listen(&channel).await {
                    tracing::warn!(error = %e, "mq-sql: LISTEN failed; retrying");
                    if !back_off(&cancel, &mut backoff).await {
                        return;
                    }
                    continue;
                }
                backoff = Duration::from_millis(100);
                wake.1.store(true, std::sync::atomic::Ordering::Release);
                // Notifications sent while not listening are lost: let everyone poll once.
                wake.wake_all();
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        n = listener.recv() => match n {
                            Ok(n) => wake.wake(n.payload()),
                            Err(e) => {
                                tracing::warn!(error = %e, "mq-sql: notification listener lost its connection");
                                wake.1.store(false, std::sync::atomic::Ordering::Release);
                                break;
                            }
                        }
                    }
                }
            }
        });
    }
}

/// Waits `backoff` before the listener's next attempt and doubles it (up to 10 s) for the one
/// after; false when `cancel` fires meanwhile.
async fn back_off(cancel: &CancellationToken, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (wait * 2).min(Duration::from_secs(10));
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// How many times a publish is tried when it deadlocks with another.
const INSERT_TRIES: usize = 8;

/// Whether `e` is PostgreSQL's deadlock error (`40P01`).
fn is_deadlock(e: &mq_core::Error) -> bool {
    matches!(e, mq_core::Error::Backend { source, .. }
        if matches!(source.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Database(d)) if d.code().as_deref() == Some("40P01")))
}

/// Stores `rows` (one queue) in one statement, or in one transaction when they take several;
/// returns the ids stored.
async fn insert_rows(
    store: &SqlStore<Postgres>,
    queue: &QueueName,
    rows: &[InsertRow],
) -> mq_core::Result<Vec<String>> {
    let chunks = insert_chunks(rows, INSERT_ROWS);
    let notify = store.options.get_notify();
    if chunks.len() <= 1 {
        // One statement: atomic by itself.
        let mut conn = store.pool.acquire().await.map_err(backend("publish"))?;
        return insert_on(&mut conn, &store.names, notify, queue, rows, true).await;
    }
    // Several statements in one transaction, so a publish is stored whole or not at all.
    // Inside it a duplicate id must not abort the transaction: conflicts are skipped.
    let mut tx = store.pool.begin().await.map_err(backend("publish"))?;
    let mut out = Vec::with_capacity(rows.len());
    for range in chunks {
        let chunk = &rows[range];
        out.extend(insert_on(&mut tx, &store.names, notify, queue, chunk, false).await?);
    }
    tx.commit().await.map_err(backend("publish"))?;
    Ok(out)
}

/// Inserts `rows` on `conn`; returns the ids stored (the others were duplicates).
async fn insert_on(
    conn: &mut PgConnection,
    names: &Names,
    notify: bool,
    queue: &QueueName,
    rows: &[InsertRow],
    optimistic: bool,
) -> mq_core::Result<Vec<String>> {
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let types: Vec<&str> = rows.iter().map(|r| r.message_type.as_str()).collect();
    let payloads: Vec<&str> = rows.iter().map(|r| r.payload.as_str()).collect();
    // Due and expiry times travel as offsets the server adds to its own clock.
    let execute_in: Vec<i64> = rows.iter().map(|r| r.execute_in_us).collect();
    let expires_in: Vec<Option<i64>> = rows.iter().map(|r| r.expires_in_us).collect();
    let max_attempts: Vec<Option<i32>> = rows.iter().map(|r| r.max_attempts).collect();
    let retry_delay: Vec<Option<i64>> = rows.iter().map(|r| r.retry_delay_ms).collect();
    let partition_key: Vec<Option<&str>> =
        rows.iter().map(|r| r.partition_key.as_deref()).collect();
    let metadata: Vec<Option<&str>> = rows.iter().map(|r| r.metadata.as_deref()).collect();
    let priority: Vec<i16> = rows.iter().map(|r| r.priority).collect();
    let unique_key: Vec<Option<&str>> = rows.iter().map(|r| r.unique_key.as_deref()).collect();
    let unique_window: Vec<Option<i64>> = rows.iter().map(|r| r.unique_window_ms).collect();
    let t = &names.table;
    // The notification rides on the insert (one round trip) and is sent on commit, only when
    // something was stored; the extra NULL row it yields is dropped below.
    // `ON CONFLICT` (speculative insertion) costs about half again as much as a plain insert, so
    // outside a caller's transaction the plain insert is tried first and the conflict-tolerant
    // one only after a unique violation. A conflict on the id or on a held unique key skips
    // the message; the caller tells which.
    let conflict = if optimistic {
        ""
    } else {
        "ON CONFLICT DO NOTHING"
    };
    let sql = format!(
        "WITH ins AS ( \
           INSERT INTO {t} (queue, id, message_type, payload, status, execute_at, expires_at, attempts, \
             max_attempts, retry_delay_ms, created_at, updated_at, partition_key, metadata, \
             priority, unique_key, unique_window_ms) \
           SELECT $1, u.id, u.message_type, u.payload::jsonb, 'scheduled', \
             now() + u.execute_in * interval '1 microsecond', now() + u.expires_in * interval '1 microsecond', 0, \
             u.max_attempts, u.retry_delay_ms, now(), now(), u.partition_key, u.metadata::jsonb, \
             u.priority, u.unique_key, u.unique_window_ms \
           FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::int4[], \
             $8::int8[], $9::text[], $10::text[], $13::int2[], $14::text[], $15::int8[]) WITH ORDINALITY \
             AS u(id, message_type, payload, execute_in, expires_in, max_attempts, retry_delay_ms, \
             partition_key, metadata, priority, unique_key, unique_window_ms, ord) \
           ORDER BY u.ord \
           {conflict} RETURNING id \
         ) \
         SELECT id FROM ins \
         UNION ALL \
         SELECT NULL FROM (SELECT pg_notify($11, $1) FROM (SELECT 1 FROM ins LIMIT 1) one WHERE $12) n"
    );
    let result: Result<Vec<Option<String>>, sqlx::Error> = sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(queue.as_str())
        .bind(&ids)
        .bind(&types)
        .bind(&payloads)
        .bind(&execute_in)
        .bind(&expires_in)
        .bind(&max_attempts)
        .bind(&retry_delay)
        .bind(&partition_key)
        .bind(&metadata)
        .bind(&names.channel)
        .bind(notify)
        .bind(&priority)
        .bind(&unique_key)
        .bind(&unique_window)
        .fetch_all(&mut *conn)
        .await;
    let inserted = match result {
        Err(sqlx::Error::Database(e)) if optimistic && e.code().as_deref() == Some("23505") => {
            return Box::pin(insert_on(conn, names, notify, queue, rows, false)).await;
        }
        other => other.map_err(backend("publish"))?,
    };
    let inserted: Vec<String> = inserted.into_iter().flatten().collect();
    Ok(inserted)
}

impl SqlQueue<Postgres> {
    /// Publishes `messages` to `queue` inside the caller's transaction (the outbox pattern): they
    /// become visible to consumers when the caller commits, and vanish if it rolls back.
    /// Validation, ids and duplicate detection are those of [`MessageQueue::publish`](mq_core::MessageQueue::publish);
    /// consumers are notified on commit. No `Published` lifecycle events are emitted, since the
    /// transaction may still roll back.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(queue: mq_sql::PgQueue, pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// use mq_core::{NewMessage, QueueName};
    ///
    /// let orders = QueueName::new("orders")?;
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = 1").execute(&mut *tx).await?;
    /// queue
    ///     .publish_in_tx(&mut tx, &orders, vec![NewMessage::new("charged", serde_json::json!({"id": 1}))])
    ///     .await?
    ///     .into_result()?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_in_tx(
        &self,
        conn: &mut PgConnection,
        queue: &QueueName,
        messages: Vec<NewMessage>,
    ) -> mq_core::Result<PublishReport> {
        let queue = self.polling().resolve_registered(queue)?;
        let mut report = PublishReport::default();
        if messages.is_empty() {
            return Ok(report);
        }
        let prepared = self.polling().prepare(&queue, messages, &mut report.failed);
        let (indexes, msgs): (Vec<usize>, Vec<Message>) = prepared.into_iter().unzip();
        let store = self.store();
        let notify = store.options.get_notify();
        // Unique keys as `publish` treats them: a key blocked by a finished holder's window or
        // an earlier message of this publish is refused first, a key the insert found held is
        // refused naming its holder (seen from inside the caller's transaction).
        let keyed = msgs.iter().any(|m| m.unique_key.is_some());
        let mut refused = std::collections::HashMap::new();
        if keyed {
            crate::controls::refuse_blocked_keys(store, &queue, &msgs, &mut refused).await?;
        }
        let fresh: Vec<Message> = msgs
            .iter()
            .enumerate()
            .filter(|(i, _)| !refused.contains_key(i))
            .map(|(_, m)| m.clone())
            .collect();
        let rows: Vec<InsertRow> = fresh.iter().map(InsertRow::of).collect();
        let mut inserted_results = Vec::with_capacity(fresh.len());
        for range in insert_chunks(&rows, INSERT_ROWS) {
            let (chunk, messages) = (&rows[range.clone()], &fresh[range]);
            let inserted = insert_on(conn, &store.names, notify, &queue, chunk, false).await?;
            inserted_results.extend(match_inserted(&queue, messages, inserted));
        }
        let mut results = crate::controls::merge(msgs.len(), refused, inserted_results);
        if keyed {
            let t = &store.names.table;
            crate::controls::name_key_holders::<Postgres>(conn, t, &queue, &msgs, &mut results)
                .await?;
        }
        for ((res, m), index) in results.into_iter().zip(&msgs).zip(indexes) {
            match res {
                Ok(()) => report.published.push(m.id.clone()),
                Err(e) => report
                    .failed
                    .push(PublishFailure::new(index, Some(m.id.clone()), e)),
            }
        }
        report.failed.sort_by_key(|f| f.index);
        Ok(report)
    }
}

/// Whether any string or key in `value` holds a NUL, which PostgreSQL's `jsonb` cannot keep.
fn json_has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}
