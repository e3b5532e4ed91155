//! MySQL and MariaDB: `SELECT ... FOR UPDATE SKIP LOCKED` in a transaction, then `UPDATE` by id
//! and read back (no `UPDATE ... RETURNING`). Needs MySQL >= 8.0.1 or MariaDB >= 10.6.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use mq_core::backend::{Claim, Claimed, Completion, QueueStore};
use mq_core::{Message, QueueName};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow};
use sqlx::{AssertSqlSafe, Executor, MySql, MySqlConnection, MySqlPool, Row};

use crate::error::{Error, backend};
use crate::options::SqlOptions;
use crate::queue::SqlQueue;
use crate::store::{
    FINISHED, InsertRow, Names, RawRow, SqlStore, completion_rows, describe_target, micros,
    retention_loop, sort_claimed, statements,
};

const MIGRATIONS: &[(&str, &str)] = &[(
    "mysql/0001_messages.sql",
    include_str!("../migrations/mysql/0001_messages.sql"),
)];

const COLS: &str = "queue, id, message_type, payload, status, execute_at, expires_at, attempts, \
    max_attempts, retry_delay_ms, created_at, updated_at, processing_started_at, partition_key, metadata, seq";

/// Rows per multi-row statement.
const CHUNK: usize = 1000;

/// A SQL queue on MySQL or MariaDB.
pub type MySqlQueue = SqlQueue<MySql>;

impl SqlStore<MySql> {
    /// Connects to `url` (`mysql://user:password@host:port/database`), checks that the server
    /// supports `SKIP LOCKED` (MySQL >= 8.0.1, MariaDB >= 10.6) and creates the table if missing.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] naming the host and port (never the password);
    /// [`Error::UnsupportedServer`] for an older server.
    pub async fn connect(url: &str, options: SqlOptions) -> Result<Self, Error> {
        options.validate()?;
        let target = describe_target(url);
        let connect_err = |e: sqlx::Error| Error::Connect {
            database: "mysql",
            target: target.clone(),
            source: Box::new(e),
        };
        let opts = MySqlConnectOptions::from_str(url)
            .map_err(connect_err)?
            .timezone(Some("+00:00".to_owned()));
        let pool = MySqlPoolOptions::new()
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
            .map_err(connect_err)?;
        Self::from_pool(pool, options).await
    }

    /// A store on an existing pool. Checks the server version and creates the table if
    /// missing. Connections should use `READ COMMITTED` and time zone `+00:00` (as
    /// [`connect`](Self::connect) sets up).
    pub async fn from_pool(pool: MySqlPool, options: SqlOptions) -> Result<Self, Error> {
        options.validate()?;
        let version: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&pool)
            .await
            .map_err(|e| Error::Connect {
                database: "mysql",
                target: "(pool)".into(),
                source: Box::new(e),
            })?;
        check_version(&version)?;
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

async fn migrate(pool: &MySqlPool, names: &Names) -> Result<(), Error> {
    let fail = |migration: &'static str| {
        let table = names.table.clone();
        move |e: sqlx::Error| Error::Migrate {
            migration,
            table,
            source: Box::new(e),
        }
    };
    let mut conn = pool.acquire().await.map_err(fail("connect"))?;
    for (name, sql) in MIGRATIONS {
        for stmt in statements(&names.render(sql)) {
            sqlx::raw_sql(AssertSqlSafe(stmt))
                .execute(&mut *conn)
                .await
                .map_err(fail(name))?;
        }
    }
    Ok(())
}

fn naive(d: DateTime<Utc>) -> NaiveDateTime {
    d.naive_utc()
}

fn decode(row: &MySqlRow) -> Result<RawRow, sqlx::Error> {
    let json = |s: String| -> Result<serde_json::Value, sqlx::Error> {
        serde_json::from_str(&s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    };
    let ts = |col: &str| -> Result<DateTime<Utc>, sqlx::Error> {
        Ok(row.try_get::<NaiveDateTime, _>(col)?.and_utc())
    };
    let opt_ts = |col: &str| -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(row
            .try_get::<Option<NaiveDateTime>, _>(col)?
            .map(|d| d.and_utc()))
    };
    Ok(RawRow {
        id: row.try_get("id")?,
        queue: row.try_get("queue")?,
        message_type: row.try_get("message_type")?,
        payload: json(row.try_get("payload")?)?,
        status: row.try_get("status")?,
        execute_at: ts("execute_at")?,
        expires_at: opt_ts("expires_at")?,
        attempts: i64::from(row.try_get::<i32, _>("attempts")?),
        max_attempts: row
            .try_get::<Option<i32>, _>("max_attempts")?
            .map(i64::from),
        retry_delay_ms: row.try_get("retry_delay_ms")?,
        created_at: ts("created_at")?,
        updated_at: ts("updated_at")?,
        processing_started_at: opt_ts("processing_started_at")?,
        partition_key: row.try_get("partition_key")?,
        metadata: row
            .try_get::<Option<String>, _>("metadata")?
            .map(json)
            .transpose()?,
        seq: row.try_get("seq")?,
    })
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Selects the ids of `queue` among `ids` under `where_` (no bind parameters of its own),
/// locking them.
async fn select_ids(
    conn: &mut MySqlConnection,
    sql_head: &str,
    queue: &QueueName,
    ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    let mut out = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!("{sql_head} AND id IN ({})", placeholders(chunk.len()));
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
    messages: &[&Message],
) -> Result<(), sqlx::Error> {
    let row = "(?, ?, ?, ?, 'scheduled', ?, ?, 0, ?, ?, ?, ?, ?, ?)";
    let values = vec![row; messages.len()].join(", ");
    let sql = format!(
        "INSERT INTO {t} (queue, id, message_type, payload, status, execute_at, expires_at, attempts, \
           max_attempts, retry_delay_ms, created_at, updated_at, partition_key, metadata) VALUES {values}"
    );
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for m in messages {
        let r = InsertRow::of(m);
        q = q
            .bind(queue.as_str().to_owned())
            .bind(r.id)
            .bind(r.message_type)
            .bind(r.payload)
            .bind(naive(r.execute_at))
            .bind(r.expires_at.map(naive))
            .bind(r.max_attempts)
            .bind(r.retry_delay_ms)
            .bind(naive(r.created_at))
            .bind(naive(r.created_at))
            .bind(r.partition_key)
            .bind(r.metadata);
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
        queue,
        &ids,
    )
    .await?
    .into_iter()
    .collect();
    let mut seen = HashSet::with_capacity(messages.len());
    let fresh: Vec<&Message> = messages
        .iter()
        .filter(|m| !existing.contains(m.id.as_str()) && seen.insert(m.id.as_str()))
        .collect();
    for chunk in fresh.chunks(CHUNK) {
        insert_chunk(&mut tx, t, queue, chunk).await?;
    }
    tx.commit().await?;
    Ok(fresh.iter().map(|m| m.id.as_str().to_owned()).collect())
}

fn is_duplicate_key(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23000"))
}

async fn purge(
    pool: &MySqlPool,
    names: &Names,
    older_than: Duration,
    batch: usize,
    archive: bool,
) -> mq_core::Result<u64> {
    let t = &names.table;
    let finished = FINISHED.map(|s| format!("'{s}'")).join(", ");
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let mut total = 0u64;
    loop {
        let mut tx = pool.begin().await.map_err(backend("purge"))?;
        let seqs: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT seq FROM {t} WHERE status IN ({finished}) \
             AND updated_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
             ORDER BY updated_at LIMIT ? FOR UPDATE SKIP LOCKED"
        )))
        .bind(micros(older_than))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend("purge"))?;
        if !seqs.is_empty() {
            let list = placeholders(seqs.len());
            if archive {
                let mut q = sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {} SELECT * FROM {t} WHERE seq IN ({list})",
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
        total += seqs.len() as u64;
        if seqs.len() < batch {
            return Ok(total);
        }
    }
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

#[async_trait]
impl QueueStore for SqlStore<MySql> {
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
        let t = &self.names.table;
        let inserted = match try_insert(&self.pool, t, queue, &messages).await {
            // A concurrent publisher stored one of the ids between our check and insert:
            // check again.
            Err(e) if is_duplicate_key(&e) => try_insert(&self.pool, t, queue, &messages).await,
            other => other,
        }
        .map_err(backend("publish"))?;
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
        let err = backend("claim");
        let n = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await.map_err(backend("claim"))?;
        let now: NaiveDateTime = sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend("claim"))?;
        let expired: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT id FROM {t} WHERE queue = ? AND status = 'scheduled' AND expires_at <= ? \
             ORDER BY expires_at LIMIT ? FOR UPDATE SKIP LOCKED"
        )))
        .bind(queue.as_str())
        .bind(now)
        .bind(n)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend("claim"))?;
        if !expired.is_empty() {
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "UPDATE {t} SET status = 'expired', updated_at = ? WHERE queue = ? AND id IN ({})",
                placeholders(expired.len())
            )))
            .bind(now)
            .bind(queue.as_str());
            for id in &expired {
                q = q.bind(id.as_str());
            }
            q.execute(&mut *tx).await.map_err(backend("claim"))?;
        }
        let mut picked: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT id FROM {t} WHERE queue = ? AND status = 'processing' AND lease_expires_at <= ? \
             ORDER BY lease_expires_at LIMIT ? FOR UPDATE SKIP LOCKED"
        )))
        .bind(queue.as_str())
        .bind(now)
        .bind(n)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend("claim"))?;
        let left = n - picked.len() as i64;
        if left > 0 {
            let ready: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT id FROM {t} WHERE queue = ? AND status = 'scheduled' AND execute_at <= ? \
                 AND (expires_at IS NULL OR expires_at > ?) \
                 ORDER BY execute_at, seq LIMIT ? FOR UPDATE SKIP LOCKED"
            )))
            .bind(queue.as_str())
            .bind(now)
            .bind(now)
            .bind(left)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend("claim"))?;
            picked.extend(ready);
        }
        if !picked.is_empty() {
            let lease_end = now + chrono::Duration::microseconds(micros(lease));
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "UPDATE {t} SET status = 'processing', lease_owner = ?, lease_expires_at = ?, \
                 attempts = attempts + 1, processing_started_at = ?, updated_at = ? \
                 WHERE queue = ? AND id IN ({})",
                placeholders(picked.len())
            )))
            .bind(owner)
            .bind(lease_end)
            .bind(now)
            .bind(now)
            .bind(queue.as_str());
            for id in &picked {
                q = q.bind(id.as_str());
            }
            q.execute(&mut *tx).await.map_err(backend("claim"))?;
        }
        let mut claimed = Vec::with_capacity(picked.len());
        let mut gone = Vec::with_capacity(expired.len());
        let all: Vec<String> = picked.into_iter().chain(expired).collect();
        for chunk in all.chunks(CHUNK) {
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "SELECT {COLS} FROM {t} WHERE queue = ? AND id IN ({})",
                placeholders(chunk.len())
            )))
            .bind(queue.as_str());
            for id in chunk {
                q = q.bind(id.as_str());
            }
            for row in q.fetch_all(&mut *tx).await.map_err(backend("claim"))? {
                let (seq, m) = decode(&row)
                    .map_err(backend("claim"))?
                    .into_message(t)
                    .map_err(mq_core::Error::from)?;
                if m.status == mq_core::Status::Expired {
                    gone.push((seq, m));
                } else {
                    claimed.push((seq, m));
                }
            }
        }
        tx.commit().await.map_err(err)?;
        sort_claimed(&mut claimed);
        sort_claimed(&mut gone);
        Ok(Claimed::new(
            claimed.into_iter().map(|(_, m)| m).collect(),
            gone.into_iter().map(|(_, m)| m).collect(),
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
        let pairs: Vec<(String, i32)> = claims
            .iter()
            .map(|c| {
                (
                    c.id.as_str().to_owned(),
                    i32::try_from(c.attempt).unwrap_or(i32::MAX),
                )
            })
            .collect();
        let mut tx = self.pool.begin().await.map_err(backend("renew"))?;
        let kept = held(&mut tx, t, queue, owner, &pairs)
            .await
            .map_err(backend("renew"))?;
        let ids: Vec<&String> = kept.iter().collect();
        for chunk in ids.chunks(CHUNK) {
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "UPDATE {t} SET lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                 WHERE queue = ? AND id IN ({})",
                placeholders(chunk.len())
            )))
            .bind(micros(lease))
            .bind(queue.as_str());
            for id in chunk {
                q = q.bind(id.as_str());
            }
            q.execute(&mut *tx).await.map_err(backend("renew"))?;
        }
        tx.commit().await.map_err(backend("renew"))?;
        Ok(claims
            .iter()
            .filter(|c| !kept.contains(c.id.as_str()))
            .cloned()
            .collect())
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
        let pairs: Vec<(String, i32)> = rows.iter().map(|r| (r.id.clone(), r.attempt)).collect();
        let mut tx = self.pool.begin().await.map_err(backend("complete"))?;
        let kept = held(&mut tx, t, queue, owner, &pairs)
            .await
            .map_err(backend("complete"))?;
        let apply: Vec<_> = rows.iter().filter(|r| kept.contains(&r.id)).collect();
        // Acks (the common case) carry no per-message values: one plain `IN` list.
        let (acks, others): (Vec<_>, Vec<_>) = apply
            .iter()
            .copied()
            .partition(|r| r.status == "executed" && r.last_error.is_none());
        let ack_sql = if self.options.get_delete_on_ack() {
            format!("DELETE FROM {t} WHERE queue = ? AND id IN (")
        } else {
            format!(
                "UPDATE {t} SET status = 'executed', lease_expires_at = NULL, \
                 updated_at = UTC_TIMESTAMP(6) WHERE queue = ? AND id IN ("
            )
        };
        for chunk in acks.chunks(CHUNK) {
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "{ack_sql}{})",
                placeholders(chunk.len())
            )))
            .bind(queue.as_str());
            for r in chunk {
                q = q.bind(r.id.as_str());
            }
            q.execute(&mut *tx).await.map_err(backend("complete"))?;
        }
        for chunk in others.chunks(CHUNK) {
            let derived = vec![
                "SELECT ? AS id, ? AS status, CAST(? AS DATETIME(6)) AS execute_at, ? AS last_error";
                chunk.len()
            ]
            .join(" UNION ALL ");
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "UPDATE {t} AS t JOIN ({derived}) AS c ON t.queue = ? AND t.id = c.id \
                 SET t.status = c.status, t.execute_at = COALESCE(c.execute_at, t.execute_at), \
                   t.last_error = COALESCE(c.last_error, t.last_error), \
                   t.lease_owner = IF(c.status = 'scheduled', NULL, t.lease_owner), \
                   t.lease_expires_at = NULL, t.updated_at = UTC_TIMESTAMP(6)"
            )));
            for r in chunk {
                q = q
                    .bind(r.id.as_str())
                    .bind(r.status)
                    .bind(r.execute_at.map(naive))
                    .bind(r.last_error.as_deref());
            }
            q.bind(queue.as_str())
                .execute(&mut *tx)
                .await
                .map_err(backend("complete"))?;
        }
        tx.commit().await.map_err(backend("complete"))?;
        if apply.iter().any(|r| r.status == "scheduled") {
            self.wake_local(queue.as_str());
        }
        Ok(completions
            .into_iter()
            .map(|c| c.claim)
            .filter(|c| !kept.contains(c.id.as_str()))
            .collect())
    }

    async fn wait_for_work(&self, queue: &QueueName, timeout: Duration) {
        self.wait_local(queue, timeout).await;
    }
    async fn queue_stats(
        &self,
        queue: Option<&QueueName>,
    ) -> mq_core::Result<Vec<mq_core::QueueStats>> {
        let sql = crate::store::stats_sql(
            &self.names.table,
            "UTC_TIMESTAMP(6)",
            |o| format!("CAST(TIMESTAMPDIFF(MICROSECOND, {o}, UTC_TIMESTAMP(6)) DIV 1000 AS SIGNED)"),
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

impl SqlQueue<MySql> {
    /// Connects to MySQL or MariaDB at `url`; see
    /// [`SqlStore::<MySql>::connect`](SqlStore::connect).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use mq_core::CommonOptions;
    /// use mq_sql::{MySqlQueue, SqlOptions};
    ///
    /// let _queue = MySqlQueue::connect("mysql://root@localhost/app", SqlOptions::default(), CommonOptions::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(
        url: &str,
        options: SqlOptions,
        common: mq_core::CommonOptions,
    ) -> Result<Self, Error> {
        Ok(SqlQueue::from_store(
            SqlStore::<MySql>::connect(url, options).await?,
            common,
        ))
    }

    /// A queue on an existing pool; see [`SqlStore::<MySql>::from_pool`](SqlStore::from_pool).
    pub async fn from_pool(
        pool: MySqlPool,
        options: SqlOptions,
        common: mq_core::CommonOptions,
    ) -> Result<Self, Error> {
        Ok(SqlQueue::from_store(
            SqlStore::<MySql>::from_pool(pool, options).await?,
            common,
        ))
    }

    /// Deletes (or archives) finished rows (executed, failed, expired, dead-lettered) last
    /// changed more than `older_than` ago, `batch` rows per statement. Returns the rows removed.
    pub async fn purge_finished(&self, older_than: Duration, batch: usize) -> mq_core::Result<u64> {
        self.store().purge_finished(older_than, batch).await
    }
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
