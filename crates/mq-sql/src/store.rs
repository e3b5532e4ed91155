//! [`SqlStore`]: the queue store, written once for every [`Dialect`]: connect, schema,
//! publish, claim, renew, complete, retention and statistics; the dialect supplies the SQL.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mq_core::backend::{Claim, Claimed, Completion, Holder, QueueStore};
use mq_core::{CancelOutcome, CancelTarget, Message, MessageId, Metadata, QueueName, Status};
use serde_json::Value;
use sqlx::{Executor, IntoArguments, QueryBuilder};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::controls;
use crate::dialect::{Dialect, ReadRow, Sql};
use crate::error::{Error, backend};
use crate::migrate::{Migration, migrate};
use crate::options::SqlOptions;
use crate::remembered;
use crate::retention::{self, retention_loop};
pub(crate) use crate::rows::{CompletionRow, InsertRow, completion_rows, insert_chunks};
use crate::stats;

/// The advisory lock key serializing concurrent schema changes of queue tables.
const QUEUE_SCHEMA_LOCK: i64 = 7_311_001;

/// The message columns, in the order the dialects select them.
pub(crate) const COLS: &str = "queue, id, message_type, payload, status, execute_at, expires_at, \
    attempts, max_attempts, retry_delay_ms, created_at, updated_at, processing_started_at, \
    partition_key, metadata, seq, priority, unique_key, unique_window_ms";

/// The test for the statuses retention removes.
pub(crate) const FINISHED_STATUS: &str =
    "status IN ('executed', 'failed', 'expired', 'dead_lettered', 'cancelled')";

/// A [`QueueStore`](mq_core::backend::QueueStore) over one SQL table, for database `DB`
/// (`sqlx::Postgres`, `sqlx::MySql` or `sqlx::Sqlite`).
///
/// Most users want [`SqlQueue`](crate::SqlQueue), which wraps it; the store alone is for
/// custom runtimes and tests. Dropping it stops its background tasks (notification listener,
/// retention).
pub struct SqlStore<DB: sqlx::Database> {
    pub(crate) pool: sqlx::Pool<DB>,
    pub(crate) names: Names,
    pub(crate) options: SqlOptions,
    pub(crate) wake: Arc<Wakeups>,
    pub(crate) tasks: TaskTracker,
    pub(crate) cancel: CancellationToken,
}

impl<DB: sqlx::Database> fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("database", &DB::NAME)
            .field("table", &self.names.table)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl<DB: sqlx::Database> Drop for SqlStore<DB> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl<DB: sqlx::Database> SqlStore<DB> {
    pub(crate) fn build(pool: sqlx::Pool<DB>, options: SqlOptions) -> Self {
        SqlStore {
            pool,
            names: Names::new(options.get_table()),
            options,
            wake: Arc::default(),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &sqlx::Pool<DB> {
        &self.pool
    }

    /// The message table.
    pub fn table(&self) -> &str {
        &self.names.table
    }

    /// The options the store was built with.
    pub fn options(&self) -> &SqlOptions {
        &self.options
    }

    /// Stops the background tasks (listener, retention) and waits for them to end. The pool
    /// stays open.
    pub async fn close(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Wakes this process's idle consumers of `queue`.
    pub(crate) fn wake_local(&self, queue: &str) {
        self.wake.wake(queue);
    }

    pub(crate) async fn wait_local(&self, queue: &QueueName, timeout: Duration) {
        let notify = self.wake.get(queue.as_str());
        let _ = tokio::time::timeout(timeout, notify.notified()).await;
    }
}

impl<DB: Dialect> SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    /// Connects to `url`, creates the table and indexes if missing (or, with
    /// [`SqlOptions::create_schema`]`(false)`, checks that the table exists) and starts the
    /// background tasks (notification listener on PostgreSQL, retention).
    ///
    /// URLs: `postgres://user:password@host:port/database`, `mysql://user:password@host:port/database`
    /// (MySQL 8.0.1 or newer, MariaDB 10.6 or newer: checked), `sqlite://path/to/file.db`
    /// (created if missing, in WAL mode).
    ///
    /// # Errors
    ///
    /// A connect error naming the host and port (never the password) when the server cannot be
    /// reached ([`Error::Connect`] as its source); an invalid table name or option; a missing
    /// table under `create_schema(false)` ([`Error::MissingTable`] as the source).
    pub async fn connect(url: &str, options: SqlOptions) -> mq_core::Result<Self> {
        options.validate()?;
        let pool = connect_pool::<DB>(url, &options).await?;
        Self::from_pool(pool, options).await
    }

    /// A store on an existing pool; prepares the schema as [`connect`](Self::connect) does.
    /// On PostgreSQL with notifications on, the listener holds one connection of the pool; on
    /// MySQL the connections should use `READ COMMITTED` and time zone `+00:00` (as `connect`
    /// sets up).
    pub async fn from_pool(pool: sqlx::Pool<DB>, options: SqlOptions) -> mq_core::Result<Self> {
        options.validate()?;
        DB::check_server(&pool).await?;
        let store = SqlStore::build(pool, options);
        let steps = DB::QUEUE_MIGRATIONS
            .iter()
            .map(|(file, sql)| (*file, store.names.render(sql)))
            .collect();
        migrate(
            &store.pool,
            &store.names.table,
            Some(&store.names.versions),
            QUEUE_SCHEMA_LOCK,
            steps,
            store.options.get_create_schema(),
        )
        .await?;
        DB::start(&store);
        if store.remembers_ids() {
            let pool = store.pool.clone();
            let names = store.names.clone();
            let interval = store.options.get_retention_interval();
            store
                .tasks
                .spawn(retention_loop(store.cancel.clone(), interval, move || {
                    let pool = pool.clone();
                    let names = names.clone();
                    async move { remembered::forget_expired(&pool, &names).await }
                }));
        }
        if let Some(pass) = retention::Pass::of(&store.options) {
            let pool = store.pool.clone();
            let names = store.names.clone();
            let interval = store.options.get_retention_interval();
            store
                .tasks
                .spawn(retention_loop(store.cancel.clone(), interval, move || {
                    let pool = pool.clone();
                    let names = names.clone();
                    async move {
                        let removed = pass.run(&pool, &names).await;
                        retention::record(&names.table, pass.archive, &removed);
                        removed
                    }
                }));
        }
        Ok(store)
    }

    /// Every schema migration of the table `options` names, with whether it has it already, as
    /// a read-only look (nothing is created or changed): for tools that show what an upgrade
    /// would apply.
    ///
    /// # Errors
    ///
    /// An invalid table name, or the database's error reading the versions.
    pub async fn migrations(
        pool: &sqlx::Pool<DB>,
        options: &SqlOptions,
    ) -> mq_core::Result<Vec<Migration>> {
        options.validate()?;
        let names = Names::new(options.get_table());
        let steps: Vec<(&'static str, String)> = DB::QUEUE_MIGRATIONS
            .iter()
            .map(|(file, sql)| (*file, names.render(sql)))
            .collect();
        Ok(crate::migrate::status(pool, &names.table, &names.versions, &steps).await?)
    }

    /// Whether acknowledged rows are deleted and their ids remembered for a window.
    fn remembers_ids(&self) -> bool {
        self.options.get_delete_on_ack() && !self.options.get_idempotency_window().is_zero()
    }

    /// Deletes (or archives, with [`SqlOptions::archive`]) finished rows (executed, failed,
    /// expired, dead-lettered) last changed more than `older_than` ago (and at least the
    /// [`idempotency window`](SqlOptions::idempotency_window)), `batch` rows per statement.
    /// Returns the rows removed.
    pub async fn purge_finished(&self, older_than: Duration, batch: usize) -> mq_core::Result<u64> {
        retention::purge(
            &self.pool,
            &self.names,
            &retention::Cutoff::older_than(older_than.max(self.options.get_idempotency_window())),
            batch.max(1),
            self.options.get_archive(),
        )
        .await
    }
}

/// Decodes claimed rows and orders them as claims take them: higher priority first, then by
/// `execute_at`, then publication order.
fn messages(rows: Vec<RawRow>, table: &str) -> mq_core::Result<Vec<Message>> {
    let mut rows = rows
        .into_iter()
        .map(|r| r.into_message(table))
        .collect::<Result<Vec<_>, _>>()?;
    rows.sort_by(|a, b| {
        b.1.priority
            .cmp(&a.1.priority)
            .then(a.1.execute_at.cmp(&b.1.execute_at))
            .then(a.0.cmp(&b.0))
    });
    Ok(rows.into_iter().map(|(_, m)| m).collect())
}

#[async_trait]
impl<DB: Dialect> QueueStore for SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    QueryBuilder<DB>: Sql,
    DB::Row: ReadRow,
{
    fn backend(&self) -> &'static str {
        "sql"
    }

    async fn close(&self) {
        SqlStore::close(self).await;
    }

    async fn register(&self, _queue: &QueueName) -> mq_core::Result<()> {
        Ok(())
    }

    async fn insert(
        &self,
        queue: &QueueName,
        messages: Vec<Message>,
    ) -> mq_core::Result<Vec<mq_core::Result<()>>> {
        let keyed = messages.iter().any(|m| m.unique_key.is_some());
        if !self.remembers_ids() && !keyed {
            let inserted = DB::insert(self, queue, &messages).await?;
            self.wake_local(queue.as_str());
            return Ok(match_inserted(queue, &messages, inserted));
        }
        // Refused before the insert: ids still remembered after their message was deleted
        // (like stored ones), keys blocked by a finished holder's window or by an earlier
        // message of this batch.
        let mut refused = if self.remembers_ids() {
            let ids: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
            let taken = remembered::taken(&self.pool, &self.names, queue, &ids).await?;
            messages
                .iter()
                .enumerate()
                .filter(|(_, m)| taken.contains(m.id.as_str()))
                .map(|(i, m)| (i, mq_core::backend::duplicate_id(queue, &m.id)))
                .collect()
        } else {
            HashMap::new()
        };
        if keyed {
            controls::refuse_blocked_keys(self, queue, &messages, &mut refused).await?;
        }
        let fresh: Vec<Message> = messages
            .iter()
            .enumerate()
            .filter(|(i, _)| !refused.contains_key(i))
            .map(|(_, m)| m.clone())
            .collect();
        let inserted = DB::insert(self, queue, &fresh).await?;
        self.wake_local(queue.as_str());
        let inserted = match_inserted(queue, &fresh, inserted);
        let mut out = controls::merge(messages.len(), refused, inserted);
        if keyed {
            // A keyed message the database refused lost to a holder stored meanwhile.
            let mut conn = self.pool.acquire().await.map_err(backend("publish"))?;
            let t = &self.names.table;
            controls::name_key_holders::<DB>(&mut conn, t, queue, &messages, &mut out).await?;
        }
        Ok(out)
    }

    fn check(&self, message: &Message) -> mq_core::Result<()> {
        DB::check_message(message)
    }

    async fn claim(
        &self,
        queue: &QueueName,
        holder: Holder<'_>,
        limit: usize,
    ) -> mq_core::Result<Claimed> {
        let Holder { owner, lease, .. } = holder;
        let (claimed, expired) = DB::claim(self, queue, owner, limit, lease).await?;
        Ok(Claimed::new(
            messages(claimed, &self.names.table)?,
            messages(expired, &self.names.table)?,
        ))
    }

    async fn renew(
        &self,
        queue: &QueueName,
        holder: Holder<'_>,
        claims: &[Claim],
    ) -> mq_core::Result<Vec<Claim>> {
        let Holder { owner, lease, .. } = holder;
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let kept = DB::renew(self, queue, owner, claims, lease).await?;
        Ok(not_applied(claims.iter().cloned(), kept))
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
        let rows = completion_rows(&completions);
        let applied = DB::complete(self, queue, owner, rows).await?;
        if self.remembers_ids() {
            // Written after the delete: a crash in between forgets these ids early, which
            // costs a duplicate only if the same id is published again within the window.
            let acked: Vec<String> = applied
                .iter()
                .filter(|(_, s)| s == "executed")
                .map(|(id, _)| id.clone())
                .collect();
            let window = self.options.get_idempotency_window();
            remembered::remember(&self.pool, &self.names, queue, &acked, window).await?;
        }
        if applied.iter().any(|(_, s)| s == "scheduled") {
            // Retries due now: let idle local consumers see them.
            self.wake_local(queue.as_str());
        }
        Ok(not_applied(
            completions.into_iter().map(|c| c.claim),
            applied.into_iter().map(|(id, _)| id).collect(),
        ))
    }

    async fn completed_by_delivery(
        &self,
        queue: &QueueName,
        owner: &str,
        claims: &[Claim],
    ) -> mq_core::Result<Vec<Claim>> {
        crate::in_tx::completed_by_delivery(&self.pool, &self.names.table, queue, owner, claims)
            .await
    }

    async fn wait_for_work(&self, queue: &QueueName, timeout: Duration) {
        self.wait_local(queue, timeout).await;
    }

    async fn cancel(
        &self,
        queue: &QueueName,
        target: CancelTarget,
    ) -> mq_core::Result<CancelOutcome> {
        controls::cancel(self, queue, target).await
    }

    async fn set_paused(&self, queue: &QueueName, paused: bool) -> mq_core::Result<()> {
        controls::set_paused(self, queue, paused).await?;
        if !paused {
            self.wake_local(queue.as_str());
        }
        Ok(())
    }

    async fn is_paused(&self, queue: &QueueName) -> mq_core::Result<bool> {
        controls::is_paused(self, queue).await
    }

    fn wake(&self, queue: &QueueName) {
        self.wake_local(queue.as_str());
    }

    async fn queue_stats(
        &self,
        queue: Option<&QueueName>,
    ) -> mq_core::Result<Vec<mq_core::QueueStats>> {
        stats::queue_stats(&self.pool, &self.names.table, queue, false).await
    }

    async fn queue_depth(
        &self,
        queue: Option<&QueueName>,
    ) -> mq_core::Result<Vec<mq_core::QueueStats>> {
        stats::queue_stats(&self.pool, &self.names.table, queue, true).await
    }
}

/// Per-queue wake-up signals shared by publishers, the notification listener and idle workers.
#[derive(Debug, Default)]
pub(crate) struct Wakeups(
    Mutex<HashMap<String, Arc<Notify>>>,
    /// True while a notification listener is subscribed.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) std::sync::atomic::AtomicBool,
);

impl Wakeups {
    pub(crate) fn get(&self, queue: &str) -> Arc<Notify> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(queue.to_owned()).or_default().clone()
    }

    pub(crate) fn wake(&self, queue: &str) {
        let notify = {
            let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.get(queue).cloned()
        };
        if let Some(n) = notify {
            n.notify_waiters();
        }
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn wake_all(&self) {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for n in map.values() {
            n.notify_waiters();
        }
    }
}

/// Identifiers derived from the validated table name, kept within 63 characters.
#[derive(Debug, Clone)]
pub struct Names {
    pub(crate) table: String,
    pub(crate) archive: String,
    /// The schema versions the table has.
    pub(crate) versions: String,
    /// Ids of deleted messages that stay taken for the idempotency window.
    pub(crate) remembered: String,
    /// The notification channel (PostgreSQL).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) channel: String,
    pub(crate) idx_ready: String,
    pub(crate) idx_leased: String,
    pub(crate) idx_expiring: String,
    pub(crate) idx_finished: String,
    pub(crate) idx_forget: String,
    /// The queues paused for every process.
    pub(crate) paused: String,
    /// Unique keys of waiting and running messages.
    pub(crate) idx_unique: String,
    /// Unique keys with a window, looked up on publish.
    pub(crate) idx_keys: String,
}

impl Names {
    /// `table` must have passed `validate_table`.
    pub(crate) fn new(table: &str) -> Self {
        Names {
            table: table.to_owned(),
            archive: derived(table, "archive"),
            versions: derived(table, "versions"),
            remembered: derived(table, "ids"),
            channel: channel(table),
            idx_ready: derived(table, "ready"),
            idx_leased: derived(table, "leased"),
            idx_expiring: derived(table, "expiring"),
            idx_finished: derived(table, "finished"),
            idx_forget: derived(table, "forget"),
            paused: derived(table, "paused"),
            idx_unique: derived(table, "unique"),
            idx_keys: derived(table, "keys"),
        }
    }

    /// Replaces the `{table}`-style placeholders of a migration.
    pub(crate) fn render(&self, sql: &str) -> String {
        sql.replace("{table}", &self.table)
            .replace("{archive}", &self.archive)
            .replace("{idx_ready}", &self.idx_ready)
            .replace("{idx_leased}", &self.idx_leased)
            .replace("{idx_expiring}", &self.idx_expiring)
            .replace("{idx_finished}", &self.idx_finished)
            .replace("{remembered}", &self.remembered)
            .replace("{idx_forget}", &self.idx_forget)
            .replace("{paused}", &self.paused)
            .replace("{idx_unique}", &self.idx_unique)
            .replace("{idx_keys}", &self.idx_keys)
    }
}

/// `mq_<table>`, the PostgreSQL notification channel (shortened like [`derived`]).
fn channel(table: &str) -> String {
    if table.len() <= 60 {
        format!("mq_{table}")
    } else {
        format!("mq_{}", derived(&table[..50], "n"))
    }
}

/// `<table>_<suffix>`, or a shortened table name plus a hash when that would pass 63 characters.
pub(crate) fn derived(table: &str, suffix: &str) -> String {
    let full = format!("{table}_{suffix}");
    if full.len() <= 63 {
        return full;
    }
    // FNV-1a: stable across runs and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in table.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let keep = 63 - suffix.len() - 10;
    format!("{}_{h:08x}_{suffix}", &table[..keep])
}

/// Splits a rendered migration into statements (separated by `;` at the end of a line).
pub(crate) fn statements(sql: &str) -> Vec<String> {
    sql.split(";\n")
        .map(str::trim)
        .filter(|s| {
            !s.is_empty()
                && !s
                    .lines()
                    .all(|l| l.trim().is_empty() || l.trim().starts_with("--"))
        })
        .map(|s| s.trim_end_matches(';').to_owned())
        .collect()
}

/// `host:port` (or the file of a SQLite URL) from a database URL, without credentials, for
/// error messages.
/// A pool on `url` set up as the dialect needs it; a failure names the host and port, never the
/// password.
pub(crate) async fn connect_pool<DB: Dialect>(
    url: &str,
    options: &SqlOptions,
) -> mq_core::Result<sqlx::Pool<DB>> {
    let pool = DB::connect_pool(url, options)
        .await
        .map_err(|e| Error::Connect {
            database: DB::KIND,
            target: describe_target(url),
            source: Box::new(e),
        })?;
    Ok(pool)
}

pub(crate) fn describe_target(url: &str) -> String {
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest,
        None => url.split_once(':').map_or(url, |(_, r)| r),
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        // sqlite:path or sqlite:///path
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() {
            "(default)".to_owned()
        } else {
            path.to_owned()
        }
    } else {
        host.to_owned()
    }
}

/// A row read back from the table, before validation.
#[derive(Debug)]
pub struct RawRow {
    pub(crate) id: String,
    pub(crate) queue: String,
    pub(crate) message_type: String,
    pub(crate) payload: Value,
    pub(crate) status: String,
    pub(crate) execute_at: DateTime<Utc>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    pub(crate) attempts: i64,
    pub(crate) max_attempts: Option<i64>,
    pub(crate) retry_delay_ms: Option<i64>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) processing_started_at: Option<DateTime<Utc>>,
    pub(crate) partition_key: Option<String>,
    pub(crate) metadata: Option<Value>,
    pub(crate) seq: i64,
    pub(crate) priority: i64,
    pub(crate) unique_key: Option<String>,
    pub(crate) unique_window_ms: Option<i64>,
}

/// Reads a message row (the `COLS` of a dialect).
pub(crate) fn decode<DB: Dialect>(row: &DB::Row) -> Result<RawRow, sqlx::Error>
where
{
    Ok(RawRow {
        id: row.text("id")?,
        queue: row.text("queue")?,
        message_type: row.text("message_type")?,
        payload: DB::read_json(row, "payload")?
            .ok_or_else(|| sqlx::Error::Decode("payload is NULL".into()))?,
        status: row.text("status")?,
        execute_at: row.time("execute_at")?,
        expires_at: row.opt_time("expires_at")?,
        attempts: row.opt_int4("attempts")?.unwrap_or(0),
        max_attempts: row.opt_int4("max_attempts")?,
        retry_delay_ms: row.opt_int("retry_delay_ms")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        processing_started_at: row.opt_time("processing_started_at")?,
        partition_key: row.opt_text("partition_key")?,
        metadata: DB::read_json(row, "metadata")?,
        seq: row.int("seq")?,
        priority: row.opt_int2("priority")?.unwrap_or(0),
        unique_key: row.opt_text("unique_key")?,
        unique_window_ms: row.opt_int("unique_window_ms")?,
    })
}

impl RawRow {
    pub(crate) fn into_message(self, table: &str) -> Result<(i64, Message), Error> {
        let bad = |id: &str, reason: String| Error::Decode {
            id: id.to_owned(),
            table: table.to_owned(),
            reason,
        };
        let id = MessageId::new(&self.id).map_err(|e| bad(&self.id, e.to_string()))?;
        let queue = QueueName::new(&self.queue).map_err(|e| bad(&self.id, e.to_string()))?;
        let status: Status = self
            .status
            .parse()
            .map_err(|e: mq_core::Error| bad(&self.id, e.to_string()))?;
        let mut m = Message::new(id, queue, self.message_type, self.payload, self.created_at);
        m.status = status;
        m.execute_at = self.execute_at;
        m.expires_at = self.expires_at;
        m.attempts = u32::try_from(self.attempts).unwrap_or(0);
        m.max_attempts = self.max_attempts.and_then(|n| u32::try_from(n).ok());
        m.retry_delay = self
            .retry_delay_ms
            .and_then(|n| u64::try_from(n).ok())
            .map(Duration::from_millis);
        m.updated_at = self.updated_at;
        m.processing_started_at = self.processing_started_at;
        m.partition_key = self.partition_key;
        m.priority =
            i16::try_from(self.priority).map_err(|e| bad(&self.id, format!("priority: {e}")))?;
        m.unique_key = self.unique_key;
        m.unique_window = self
            .unique_window_ms
            .and_then(|n| u64::try_from(n).ok())
            .map(Duration::from_millis);
        if let Some(meta) = self.metadata {
            m.metadata = serde_json::from_value::<Metadata>(meta)
                .map_err(|e| bad(m.id.as_str(), format!("metadata: {e}")))?;
        }
        Ok((self.seq, m))
    }
}

/// Interval as whole microseconds, saturating.
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// One result per message from the ids an insert reported as stored: the others were
/// duplicates (of a stored message or of an earlier message of the same batch).
pub(crate) fn match_inserted(
    queue: &QueueName,
    messages: &[Message],
    inserted: Vec<String>,
) -> Vec<mq_core::Result<()>> {
    let mut left: HashMap<String, usize> = HashMap::with_capacity(inserted.len());
    for id in inserted {
        *left.entry(id).or_default() += 1;
    }
    messages
        .iter()
        .map(|m| match left.get_mut(m.id.as_str()) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Ok(())
            }
            _ => Err(mq_core::backend::duplicate_id(queue, &m.id)),
        })
        .collect()
}

/// The claims whose id is not in `applied`.
pub(crate) fn not_applied(
    claims: impl Iterator<Item = mq_core::backend::Claim>,
    applied: Vec<String>,
) -> Vec<mq_core::backend::Claim> {
    let applied: std::collections::HashSet<String> = applied.into_iter().collect();
    claims
        .filter(|c| !applied.contains(c.id.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_hide_credentials() {
        for (url, target) in [
            ("postgres://u:secret@db.example:5433/app", "db.example:5433"),
            ("mysql://root@127.0.0.1:3306/test", "127.0.0.1:3306"),
            ("postgres://u:p%40ss@h/x?sslmode=disable", "h"),
            ("sqlite:///tmp/q.db?mode=rwc", "/tmp/q.db"),
            ("sqlite:q.db", "q.db"),
        ] {
            assert_eq!(describe_target(url), target, "{url}");
        }
    }

    #[test]
    fn derived_names_fit() {
        let long = "a".repeat(63);
        let n = Names::new(&long);
        for s in [
            &n.archive,
            &n.channel,
            &n.idx_ready,
            &n.idx_leased,
            &n.idx_expiring,
            &n.idx_finished,
        ] {
            assert!(s.len() <= 63, "{s}");
        }
        assert_ne!(n.idx_ready, n.idx_leased);
        assert_eq!(Names::new("jobs").idx_ready, "jobs_ready");
    }

    #[test]
    fn splits_statements() {
        let s = statements("-- c\nCREATE TABLE a (x int);\nCREATE INDEX b ON a (x);\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[1], "CREATE INDEX b ON a (x)");
    }
}
