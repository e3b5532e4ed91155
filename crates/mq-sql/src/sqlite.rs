//! SQLite: one write transaction (`BEGIN IMMEDIATE`) per claim with `UPDATE ... RETURNING`;
//! timestamps are integer microseconds; the embedded default.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mq_core::backend::{Claim, Claimed, Completion, QueueStore};
use mq_core::{Message, QueueName};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite, SqliteConnection, SqlitePool};

use crate::error::{Error, backend};
use crate::options::SqlOptions;
use crate::queue::SqlQueue;
use crate::store::{
    FINISHED, InsertRow, Names, RawRow, SqlStore, completion_rows, describe_target, micros,
    retention_loop, sort_claimed, statements,
};

const MIGRATIONS: &[(&str, &str)] = &[(
    "sqlite/0001_messages.sql",
    include_str!("../migrations/sqlite/0001_messages.sql"),
)];

const COLS: &str = "queue, id, message_type, payload, status, execute_at, expires_at, attempts, \
    max_attempts, retry_delay_ms, created_at, updated_at, processing_started_at, partition_key, metadata, seq";

/// Rows per multi-row statement (SQLite allows 32766 bound parameters).
const CHUNK: usize = 1000;

/// A SQL queue on SQLite.
pub type SqliteQueue = SqlQueue<Sqlite>;

impl SqlStore<Sqlite> {
    /// Opens (creating if missing) the database at `url` (`sqlite://path/to/file.db`), in WAL
    /// mode, and creates the table if missing.
    pub async fn connect(url: &str, options: SqlOptions) -> Result<Self, Error> {
        options.validate()?;
        let target = describe_target(url);
        let connect_err = |e: sqlx::Error| Error::Connect {
            database: "sqlite",
            target: target.clone(),
            source: Box::new(e),
        };
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(connect_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(options.get_connect_timeout().max(Duration::from_secs(5)));
        let pool = SqlitePoolOptions::new()
            .max_connections(options.get_max_connections())
            .acquire_timeout(options.get_connect_timeout())
            .connect_with(opts)
            .await
            .map_err(connect_err)?;
        Self::from_pool(pool, options).await
    }

    /// A store on an existing pool. Creates the table if missing.
    pub async fn from_pool(pool: SqlitePool, options: SqlOptions) -> Result<Self, Error> {
        options.validate()?;
        let store = SqlStore::build(pool, options);
        migrate(&store.pool, &store.names).await?;
        if let Some(age) = store.options.get_retention() {
            let pool = store.pool.clone();
            let names = store.names.clone();
            let batch = store.options.get_retention_batch();
            let archive = store.options.get_archive();
            let interval = store.options.get_retention_interval();
            store
                .tasks
                .spawn(retention_loop(store.cancel.clone(), interval, move || {
                    let pool = pool.clone();
                    let names = names.clone();
                    async move { purge(&pool, &names, age, batch, archive).await }
                }));
        }
        Ok(store)
    }

    /// Deletes (or archives, with [`SqlOptions::archive`]) finished rows last changed more than
    /// `older_than` ago, `batch` rows per statement. Returns the rows removed.
    pub async fn purge_finished(&self, older_than: Duration, batch: usize) -> mq_core::Result<u64> {
        purge(
            &self.pool,
            &self.names,
            older_than,
            batch.max(1),
            self.options.get_archive(),
        )
        .await
    }
}

async fn migrate(pool: &SqlitePool, names: &Names) -> Result<(), Error> {
    let fail = |migration: &'static str| {
        let table = names.table.clone();
        move |e: sqlx::Error| Error::Migrate {
            migration,
            table,
            source: Box::new(e),
        }
    };
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(fail("begin"))?;
    for (name, sql) in MIGRATIONS {
        for stmt in statements(&names.render(sql)) {
            sqlx::raw_sql(AssertSqlSafe(stmt))
                .execute(&mut *tx)
                .await
                .map_err(fail(name))?;
        }
    }
    tx.commit().await.map_err(fail("commit"))?;
    Ok(())
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn ts(v: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| sqlx::Error::Decode(format!("timestamp {v} out of range").into()))
}

fn decode(row: &SqliteRow) -> Result<RawRow, sqlx::Error> {
    let json = |s: String| -> Result<serde_json::Value, sqlx::Error> {
        serde_json::from_str(&s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    };
    Ok(RawRow {
        id: row.try_get("id")?,
        queue: row.try_get("queue")?,
        message_type: row.try_get("message_type")?,
        payload: json(row.try_get("payload")?)?,
        status: row.try_get("status")?,
        execute_at: ts(row.try_get("execute_at")?)?,
        expires_at: row
            .try_get::<Option<i64>, _>("expires_at")?
            .map(ts)
            .transpose()?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        retry_delay_ms: row.try_get("retry_delay_ms")?,
        created_at: ts(row.try_get("created_at")?)?,
        updated_at: ts(row.try_get("updated_at")?)?,
        processing_started_at: row
            .try_get::<Option<i64>, _>("processing_started_at")?
            .map(ts)
            .transpose()?,
        partition_key: row.try_get("partition_key")?,
        metadata: row
            .try_get::<Option<String>, _>("metadata")?
            .map(json)
            .transpose()?,
        seq: row.try_get("seq")?,
    })
}

fn decode_all(rows: &[SqliteRow], table: &str) -> mq_core::Result<Vec<(i64, Message)>> {
    rows.iter()
        .map(|r| {
            decode(r)
                .map_err(backend("claim"))?
                .into_message(table)
                .map_err(mq_core::Error::from)
        })
        .collect()
}

async fn insert_chunk(
    conn: &mut SqliteConnection,
    t: &str,
    queue: &QueueName,
    messages: &[Message],
) -> Result<Vec<String>, sqlx::Error> {
    let row = "(?, ?, ?, ?, 'scheduled', ?, ?, 0, ?, ?, ?, ?, ?, ?)";
    let values = vec![row; messages.len()].join(", ");
    let sql = format!(
        "INSERT INTO {t} (queue, id, message_type, payload, status, execute_at, expires_at, attempts, \
           max_attempts, retry_delay_ms, created_at, updated_at, partition_key, metadata) \
         VALUES {values} ON CONFLICT (queue, id) DO NOTHING RETURNING id"
    );
    let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
    for m in messages {
        let r = InsertRow::of(m);
        q = q
            .bind(queue.as_str().to_owned())
            .bind(r.id)
            .bind(r.message_type)
            .bind(r.payload)
            .bind(r.execute_at.timestamp_micros())
            .bind(r.expires_at.map(|d| d.timestamp_micros()))
            .bind(r.max_attempts)
            .bind(r.retry_delay_ms)
            .bind(r.created_at.timestamp_micros())
            .bind(r.created_at.timestamp_micros())
            .bind(r.partition_key)
            .bind(r.metadata);
    }
    q.fetch_all(&mut *conn).await
}

async fn purge(
    pool: &SqlitePool,
    names: &Names,
    older_than: Duration,
    batch: usize,
    archive: bool,
) -> mq_core::Result<u64> {
    let t = &names.table;
    let finished = FINISHED.map(|s| format!("'{s}'")).join(", ");
    let pick = format!(
        "SELECT seq FROM {t} WHERE status IN ({finished}) AND updated_at < ?1 ORDER BY updated_at LIMIT ?2"
    );
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let mut total = 0u64;
    loop {
        let cutoff = now_micros().saturating_sub(micros(older_than));
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend("purge"))?;
        if archive {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} SELECT * FROM {t} WHERE seq IN ({pick})",
                names.archive
            )))
            .bind(cutoff)
            .bind(limit)
            .execute(&mut *tx)
            .await
            .map_err(backend("purge"))?;
        }
        let n = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {t} WHERE seq IN ({pick})"
        )))
        .bind(cutoff)
        .bind(limit)
        .execute(&mut *tx)
        .await
        .map_err(backend("purge"))?
        .rows_affected();
        tx.commit().await.map_err(backend("purge"))?;
        total += n;
        if n < batch as u64 {
            return Ok(total);
        }
    }
}

#[async_trait]
impl QueueStore for SqlStore<Sqlite> {
    fn backend(&self) -> &'static str {
        "sql"
    }

    async fn register(&self, _queue: &QueueName) -> mq_core::Result<()> {
        Ok(())
    }

    async fn insert(
        &self,
        queue: &QueueName,
        messages: Vec<Message>,
    ) -> mq_core::Result<Vec<mq_core::Result<()>>> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend("publish"))?;
        let mut inserted = Vec::with_capacity(messages.len());
        for chunk in messages.chunks(CHUNK) {
            inserted.extend(
                insert_chunk(&mut tx, &self.names.table, queue, chunk)
                    .await
                    .map_err(backend("publish"))?,
            );
        }
        tx.commit().await.map_err(backend("publish"))?;
        self.wake_local(queue.as_str());
        Ok(crate::store::match_inserted(queue, &messages, inserted))
    }

    async fn claim(
        &self,
        queue: &QueueName,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> mq_core::Result<Claimed> {
        let t = &self.names.table;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend("claim"))?;
        let now = now_micros();
        let expired = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {t} SET status = 'expired', updated_at = ?1 WHERE seq IN ( \
               SELECT seq FROM {t} WHERE queue = ?2 AND status = 'scheduled' \
               AND expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?3) \
             RETURNING {COLS}"
        )))
        .bind(now)
        .bind(queue.as_str())
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend("claim"))?;
        let claimed = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {t} SET status = 'processing', lease_owner = ?4, lease_expires_at = ?1 + ?5, \
               attempts = attempts + 1, processing_started_at = ?1, updated_at = ?1 \
             WHERE seq IN (SELECT seq FROM ( \
               SELECT seq FROM (SELECT seq FROM {t} WHERE queue = ?2 AND status = 'processing' \
                 AND lease_expires_at <= ?1 ORDER BY lease_expires_at LIMIT ?3) \
               UNION ALL \
               SELECT seq FROM (SELECT seq FROM {t} WHERE queue = ?2 AND status = 'scheduled' \
                 AND execute_at <= ?1 AND (expires_at IS NULL OR expires_at > ?1) \
                 ORDER BY execute_at, seq LIMIT ?3) \
             ) LIMIT ?3) \
             RETURNING {COLS}"
        )))
        .bind(now)
        .bind(queue.as_str())
        .bind(limit)
        .bind(owner)
        .bind(micros(lease))
        .fetch_all(&mut *tx)
        .await
        .map_err(backend("claim"))?;
        tx.commit().await.map_err(backend("claim"))?;
        let mut claimed = decode_all(&claimed, t)?;
        let mut expired = decode_all(&expired, t)?;
        sort_claimed(&mut claimed);
        sort_claimed(&mut expired);
        Ok(Claimed::new(
            claimed.into_iter().map(|(_, m)| m).collect(),
            expired.into_iter().map(|(_, m)| m).collect(),
        ))
    }

    async fn renew(
        &self,
        queue: &QueueName,
        owner: &str,
        claims: &[Claim],
        lease: Duration,
    ) -> mq_core::Result<Vec<Claim>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let t = &self.names.table;
        let mut kept = Vec::with_capacity(claims.len());
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend("renew"))?;
        let now = now_micros();
        for chunk in claims.chunks(CHUNK) {
            let values = vec!["(?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "WITH c(id, attempt) AS (VALUES {values}) \
                 UPDATE {t} AS t SET lease_expires_at = ? FROM c \
                 WHERE t.queue = ? AND t.id = c.id AND t.attempts = c.attempt AND t.status = 'processing' \
                   AND t.lease_owner = ? AND t.lease_expires_at > ? \
                 RETURNING id"
            );
            let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
            for c in chunk {
                q = q.bind(c.id.as_str().to_owned()).bind(i64::from(c.attempt));
            }
            let got = q
                .bind(now.saturating_add(micros(lease)))
                .bind(queue.as_str())
                .bind(owner)
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend("renew"))?;
            kept.extend(got);
        }
        tx.commit().await.map_err(backend("renew"))?;
        Ok(crate::store::not_applied(claims.iter().cloned(), kept))
    }

    async fn complete(
        &self,
        queue: &QueueName,
        owner: &str,
        completions: Vec<Completion>,
    ) -> mq_core::Result<Vec<Claim>> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let t = &self.names.table;
        let rows = completion_rows(&completions);
        let mut applied = Vec::with_capacity(rows.len());
        let mut retried = false;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend("complete"))?;
        let now = now_micros();
        let (acks, rows): (Vec<_>, Vec<_>) = rows
            .into_iter()
            .partition(|r| self.options.get_delete_on_ack() && r.status == "executed");
        for chunk in acks.chunks(CHUNK) {
            let values = vec!["(?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "WITH c(id, attempt) AS (VALUES {values}) \
                 DELETE FROM {t} WHERE queue = ? AND status = 'processing' AND lease_owner = ? \
                   AND lease_expires_at > ? \
                   AND EXISTS (SELECT 1 FROM c WHERE c.id = {t}.id AND c.attempt = {t}.attempts) \
                 RETURNING id"
            );
            let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
            for r in chunk {
                q = q.bind(r.id.clone()).bind(i64::from(r.attempt));
            }
            let got = q
                .bind(queue.as_str())
                .bind(owner)
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend("complete"))?;
            applied.extend(got);
        }
        for chunk in rows.chunks(CHUNK) {
            let values = vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "WITH c(id, attempt, status, execute_at, last_error) AS (VALUES {values}) \
                 UPDATE {t} AS t SET status = c.status, execute_at = COALESCE(c.execute_at, t.execute_at), \
                   last_error = COALESCE(c.last_error, t.last_error), \
                   lease_owner = CASE WHEN c.status = 'scheduled' THEN NULL ELSE t.lease_owner END, \
                   lease_expires_at = NULL, updated_at = ? \
                 FROM c \
                 WHERE t.queue = ? AND t.id = c.id AND t.attempts = c.attempt AND t.status = 'processing' \
                   AND t.lease_owner = ? AND t.lease_expires_at > ? \
                 RETURNING id, status"
            );
            let mut q = sqlx::query_as::<_, (String, String)>(AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(r.id.clone())
                    .bind(i64::from(r.attempt))
                    .bind(r.status)
                    .bind(r.execute_at.map(|d| d.timestamp_micros()))
                    .bind(r.last_error.clone());
            }
            let got = q
                .bind(now)
                .bind(queue.as_str())
                .bind(owner)
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend("complete"))?;
            retried |= got.iter().any(|(_, s)| s == "scheduled");
            applied.extend(got.into_iter().map(|(id, _)| id));
        }
        tx.commit().await.map_err(backend("complete"))?;
        if retried {
            self.wake_local(queue.as_str());
        }
        Ok(crate::store::not_applied(
            completions.into_iter().map(|c| c.claim),
            applied,
        ))
    }

    async fn wait_for_work(&self, queue: &QueueName, timeout: Duration) {
        self.wait_local(queue, timeout).await;
    }
    async fn queue_stats(
        &self,
        queue: Option<&QueueName>,
    ) -> mq_core::Result<Vec<mq_core::QueueStats>> {
        // SQLite keeps times as Unix microseconds; the clock is this process's, as for claims.
        let now = now_micros().to_string();
        let sql = crate::store::stats_sql(
            &self.names.table,
            &now,
            |o| format!("({now} - {o}) / 1000"),
            queue.map(|_| "?"),
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(queue) = queue {
            query = query.bind(queue.as_str());
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(backend("queue stats"))?;
        let rows = rows
            .iter()
            .map(crate::store::stats_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend("queue stats"))?;
        crate::store::fold_stats(rows)
    }
}

impl SqlQueue<Sqlite> {
    /// Opens the SQLite database at `url`; see [`SqlStore::<Sqlite>::connect`](SqlStore::connect).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use mq_core::CommonOptions;
    /// use mq_sql::{SqlOptions, SqliteQueue};
    ///
    /// let _queue = SqliteQueue::connect("sqlite://mq.db", SqlOptions::default(), CommonOptions::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(
        url: &str,
        options: SqlOptions,
        common: mq_core::CommonOptions,
    ) -> Result<Self, Error> {
        Ok(SqlQueue::from_store(
            SqlStore::<Sqlite>::connect(url, options).await?,
            common,
        ))
    }

    /// A queue on an existing pool; see [`SqlStore::<Sqlite>::from_pool`](SqlStore::from_pool).
    pub async fn from_pool(
        pool: SqlitePool,
        options: SqlOptions,
        common: mq_core::CommonOptions,
    ) -> Result<Self, Error> {
        Ok(SqlQueue::from_store(
            SqlStore::<Sqlite>::from_pool(pool, options).await?,
            common,
        ))
    }

    /// Deletes (or archives) finished rows (executed, failed, expired, dead-lettered) last
    /// changed more than `older_than` ago, `batch` rows per statement. Returns the rows removed.
    pub async fn purge_finished(&self, older_than: Duration, batch: usize) -> mq_core::Result<u64> {
        self.store().purge_finished(older_than, batch).await
    }
}
