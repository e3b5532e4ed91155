//! [`SqlCheckpointStore`]: durable Kinesis checkpoints with an epoch fence, in one SQL table.
//!
//! Every write is atomic: a checkpoint write is first tried as one conditional `UPDATE` that
//! expresses the whole rule (epoch not older than the newest seen, sequence number after the
//! stored one by (length, text)); anything else (a first write, a refused write that must be told
//! apart as fenced or not forward, an epoch observation, an operator override) runs in one
//! transaction that locks the shard's row, decides with
//! [`CheckpointOutcome::decide`](mq_core::backend::CheckpointOutcome::decide) and writes.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mq_core::backend::{
    CheckpointOutcome, CheckpointStore, StoredCheckpoint, normalize_sequence_number,
};
use sqlx::{AssertSqlSafe, Connection, Executor, QueryBuilder};

use crate::dialect::{Dialect, ReadRow, Sql};
use crate::migrate::migrate;
use crate::options::SqlOptions;
use crate::options::validate_table;
use crate::store::connect_pool;

/// The table [`SqlCheckpointStore`] uses unless told otherwise.
pub const DEFAULT_CHECKPOINT_TABLE: &str = "mq_checkpoints";

/// The advisory lock key serializing concurrent schema changes of checkpoint tables.
const CHECKPOINT_SCHEMA_LOCK: i64 = 7_311_002;

/// How often a transaction that lost a deadlock or a serialization race is retried.
const ATTEMPTS: usize = 20;

/// Durable shard checkpoints with an epoch fence, in one table of database `DB`
/// (`sqlx::Postgres`, `sqlx::MySql` or `sqlx::Sqlite`): the [`mq_core::backend::CheckpointStore`] that
/// mq-kinesis pairs with a lease store that may lose its data (Redis without persistence).
///
/// One row per (stream, shard): the sequence number (decimal text without leading zeros, and its
/// length), the epoch that wrote it, the newest epoch seen and the time of the last change. The
/// table is created from `migrations/<database>/0001_checkpoints.sql` when the store is built;
/// its name is configurable (`[A-Za-z_][A-Za-z0-9_]{0,62}`).
///
/// Use the aliases [`PgCheckpointStore`](crate::PgCheckpointStore),
/// [`MySqlCheckpointStore`](crate::MySqlCheckpointStore) and
/// [`SqliteCheckpointStore`](crate::SqliteCheckpointStore).
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use mq_core::backend::CheckpointStore;
/// use mq_sql::PgCheckpointStore;
///
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/app").await?;
/// let store: Arc<dyn CheckpointStore> =
///     Arc::new(PgCheckpointStore::from_pool(pool, "kinesis_checkpoints").await?);
/// # let _ = store;
/// # Ok(()) }
/// ```
pub struct SqlCheckpointStore<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    table: String,
}

impl<DB: sqlx::Database> fmt::Debug for SqlCheckpointStore<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlCheckpointStore")
            .field("database", &DB::NAME)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl<DB: sqlx::Database> Clone for SqlCheckpointStore<DB> {
    fn clone(&self) -> Self {
        SqlCheckpointStore {
            pool: self.pool.clone(),
            table: self.table.clone(),
        }
    }
}

impl<DB: sqlx::Database> SqlCheckpointStore<DB> {
    fn build(pool: sqlx::Pool<DB>, table: String) -> Result<Self, crate::Error> {
        validate_table(&table)?;
        Ok(SqlCheckpointStore { pool, table })
    }

    /// The connection pool.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "sqlite")]
    /// # async fn f(store: mq_sql::SqliteCheckpointStore) {
    /// let pool: &sqlx::SqlitePool = store.pool();
    /// # let _ = pool; }
    /// ```
    pub fn pool(&self) -> &sqlx::Pool<DB> {
        &self.pool
    }

    /// The checkpoint table.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "sqlite")]
    /// # async fn f(pool: sqlx::SqlitePool) -> mq_core::Result<()> {
    /// let store = mq_sql::SqliteCheckpointStore::from_pool(pool, "ckpt").await?;
    /// assert_eq!(store.table(), "ckpt");
    /// # Ok(()) }
    /// ```
    pub fn table(&self) -> &str {
        &self.table
    }
}

/// One shard's row.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) sequence_number: Option<String>,
    pub(crate) written_epoch: u64,
    pub(crate) epoch: u64,
    pub(crate) updated_at: DateTime<Utc>,
}

impl Row {
    pub(crate) fn into_stored(self, shard: String) -> StoredCheckpoint {
        StoredCheckpoint::new(
            shard,
            self.sequence_number,
            self.written_epoch,
            self.epoch,
            self.updated_at,
        )
    }

    pub(crate) fn sequence_length(&self) -> i32 {
        self.sequence_number
            .as_deref()
            .map_or(0, |s| i32::try_from(s.len()).unwrap_or(i32::MAX))
    }
}

/// A change to one shard's row, decided on the locked row.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Save { epoch: u64, sequence_number: String },
    Observe { epoch: u64 },
    Set { sequence_number: String },
}

impl Op {
    /// The new row, or `None` when nothing changes.
    pub(crate) fn apply(&self, prev: Option<&Row>) -> Option<Row> {
        let now = Utc::now();
        match self {
            Op::Save {
                epoch,
                sequence_number,
            } => (self.outcome(prev) == CheckpointOutcome::Advanced).then(|| Row {
                sequence_number: Some(sequence_number.clone()),
                written_epoch: *epoch,
                epoch: *epoch,
                updated_at: now,
            }),
            Op::Observe { epoch } => match prev {
                Some(p) if p.epoch >= *epoch => None,
                Some(p) => Some(Row {
                    epoch: *epoch,
                    updated_at: now,
                    ..p.clone()
                }),
                None => Some(Row {
                    sequence_number: None,
                    written_epoch: 0,
                    epoch: *epoch,
                    updated_at: now,
                }),
            },
            Op::Set { sequence_number } => {
                let epoch = prev.map_or(0, |p| p.epoch) + 1;
                Some(Row {
                    sequence_number: Some(sequence_number.clone()),
                    written_epoch: epoch,
                    epoch,
                    updated_at: now,
                })
            }
        }
    }

    /// What a save did, given the row it found.
    pub(crate) fn outcome(&self, prev: Option<&Row>) -> CheckpointOutcome {
        match self {
            Op::Save {
                epoch,
                sequence_number,
            } => CheckpointOutcome::decide(
                prev.and_then(|p| p.sequence_number.as_deref()),
                prev.map_or(0, |p| p.epoch),
                *epoch,
                sequence_number,
            ),
            _ => CheckpointOutcome::Advanced,
        }
    }
}

/// An epoch as a database BIGINT.
pub(crate) fn to_i64(epoch: u64) -> mq_core::Result<i64> {
    i64::try_from(epoch).map_err(|_| {
        mq_core::Error::invalid_option("epoch", format!("{epoch} does not fit a signed 64-bit"))
    })
}

/// A stored BIGINT as an epoch.
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// True for errors after which the whole transaction can simply run again (deadlock,
/// serialization failure, unique violation of a racing first insert, a busy SQLite).
pub(crate) fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            matches!(
                d.code().as_deref(),
                Some("40001" | "40P01" | "5" | "6" | "517")
            ) || d.is_unique_violation()
        }
        _ => false,
    }
}

/// Runs `attempt` until it succeeds, retrying retryable errors a bounded number of times.
pub(crate) async fn with_retries<T, F, Fut>(
    operation: &'static str,
    mut attempt: F,
) -> mq_core::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut n = 0;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if retryable(&e) && n + 1 < ATTEMPTS => {
                n += 1;
                tracing::debug!(error = %e, operation, "mq-sql: lost a race (deadlock, serialization or busy database), retrying");
                tokio::time::sleep(std::time::Duration::from_millis(2 * n as u64)).await;
            }
            Err(e) => return Err(mq_core::Error::backend("sql", operation, e)),
        }
    }
}

impl<DB: Dialect> SqlCheckpointStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    /// Connects to `url` with a pool set up as the queue's (`sqlite://` files are created in WAL
    /// mode) and opens the checkpoint store in `table`, as [`from_pool`](Self::from_pool) does.
    ///
    /// # Errors
    ///
    /// A connect error naming the host and port (never the password), an invalid table name,
    /// or a failed migration.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "sqlite")]
    /// # async fn f() -> mq_core::Result<()> {
    /// let store = mq_sql::SqliteCheckpointStore::connect(
    ///     "sqlite://checkpoints.db",
    ///     mq_sql::DEFAULT_CHECKPOINT_TABLE,
    /// )
    /// .await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub async fn connect(url: &str, table: impl Into<String>) -> mq_core::Result<Self> {
        let pool = connect_pool::<DB>(url, &SqlOptions::default()).await?;
        Self::from_pool(pool, table).await
    }

    /// A checkpoint store in `table` of `pool`'s database (see
    /// [`DEFAULT_CHECKPOINT_TABLE`]); creates the table if missing (on PostgreSQL under an
    /// advisory lock).
    ///
    /// # Errors
    ///
    /// An invalid table name, or a failed migration ([`crate::Error::Migrate`] as the source).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/app").await?;
    /// let store = mq_sql::PgCheckpointStore::from_pool(pool, mq_sql::DEFAULT_CHECKPOINT_TABLE).await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub async fn from_pool(
        pool: sqlx::Pool<DB>,
        table: impl Into<String>,
    ) -> mq_core::Result<Self> {
        let store = Self::build(pool, table.into())?;
        let (file, sql) = DB::CHECKPOINT_MIGRATION;
        let steps = vec![(file, sql.replace("{table}", &store.table))];
        migrate(
            &store.pool,
            &store.table,
            None,
            CHECKPOINT_SCHEMA_LOCK,
            steps,
            true,
        )
        .await?;
        Ok(store)
    }

    fn select_sql(&self, stream: &str, shard: &str, lock: bool) -> QueryBuilder<DB> {
        let mut q = QueryBuilder::<DB>::new(format!(
            "SELECT sequence_number, written_epoch, epoch, updated_at FROM {} WHERE stream = ",
            self.table
        ));
        q.text(stream.to_owned());
        q.raw(" AND shard = ");
        q.text(shard.to_owned());
        if lock {
            q.raw(DB::LOCK_ROW);
        }
        q
    }

    /// The row of (stream, shard), unlocked.
    async fn select(&self, stream: &str, shard: &str) -> Result<Option<Row>, sqlx::Error> {
        let mut q = self.select_sql(stream, shard, false);
        q.build()
            .fetch_optional(&self.pool)
            .await?
            .map(|r| decode(&r))
            .transpose()
    }

    /// Every row of `stream` with its shard.
    async fn list(&self, stream: &str) -> Result<Vec<(String, Row)>, sqlx::Error> {
        let mut q = QueryBuilder::<DB>::new(format!(
            "SELECT shard, sequence_number, written_epoch, epoch, updated_at FROM {} \
             WHERE stream = ",
            self.table
        ));
        q.text(stream.to_owned());
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.opt_text("shard")?.unwrap_or_default(), decode(r)?)))
            .collect()
    }

    /// One conditional `UPDATE` that advances the checkpoint when the rule allows it; true when
    /// it did.
    async fn fast_save(
        &self,
        stream: &str,
        shard: &str,
        epoch: i64,
        sequence_number: &str,
    ) -> Result<bool, sqlx::Error> {
        let len = i32::try_from(sequence_number.len()).unwrap_or(i32::MAX);
        let mut q =
            QueryBuilder::<DB>::new(format!("UPDATE {} SET sequence_number = ", self.table));
        q.text(sequence_number.to_owned());
        q.raw(", sequence_length = ");
        q.int4(len);
        q.raw(", written_epoch = ");
        q.int(epoch);
        q.raw(", epoch = ");
        q.int(epoch);
        q.raw(", updated_at = ");
        q.time(Utc::now());
        q.raw(" WHERE stream = ");
        q.text(stream.to_owned());
        q.raw(" AND shard = ");
        q.text(shard.to_owned());
        q.raw(" AND epoch <= ");
        q.int(epoch);
        q.raw(" AND (sequence_number IS NULL OR sequence_length < ");
        q.int4(len);
        q.raw(" OR (sequence_length = ");
        q.int4(len);
        q.raw(" AND sequence_number < ");
        q.text(sequence_number.to_owned());
        q.raw("))");
        let done = q.build().execute(&self.pool).await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    /// Applies `op` in [`modify_once`](Self::modify_once), retrying lost races.
    async fn modify(&self, stream: &str, shard: &str, op: &Op) -> mq_core::Result<Option<Row>> {
        with_retries("checkpoint", || self.modify_once(stream, shard, op)).await
    }

    /// One transaction: lock the row (or insert it), apply `op`, commit; returns the row as it
    /// was before.
    async fn modify_once(
        &self,
        stream: &str,
        shard: &str,
        op: &Op,
    ) -> Result<Option<Row>, sqlx::Error> {
        let t = &self.table;
        let mut conn = self.pool.acquire().await?;
        if let Some(sql) = DB::BEFORE_WRITE {
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(&mut *conn)
                .await?;
        }
        let mut tx = conn
            .begin_with(AssertSqlSafe(DB::BEGIN_WRITE.to_owned()))
            .await?;
        let prev = self
            .select_sql(stream, shard, true)
            .build()
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| decode(&r))
            .transpose()?;
        let Some(new) = op.apply(prev.as_ref()) else {
            tx.rollback().await?;
            return Ok(prev);
        };
        // a racing first insert fails with a unique violation and the caller runs it again
        let mut q = QueryBuilder::<DB>::new(if prev.is_none() {
            format!(
                "INSERT INTO {t} (sequence_number, sequence_length, written_epoch, epoch, \
                 updated_at, stream, shard) VALUES ("
            )
        } else {
            format!("UPDATE {t} SET sequence_number = ")
        });
        let sep = |q: &mut QueryBuilder<DB>, col: &str| {
            q.raw(if prev.is_none() { ", " } else { col });
        };
        q.opt_text(new.sequence_number.clone());
        sep(&mut q, ", sequence_length = ");
        q.int4(new.sequence_length());
        sep(&mut q, ", written_epoch = ");
        q.int(epoch(new.written_epoch)?);
        sep(&mut q, ", epoch = ");
        q.int(epoch(new.epoch)?);
        sep(&mut q, ", updated_at = ");
        q.time(new.updated_at);
        sep(&mut q, " WHERE stream = ");
        q.text(stream.to_owned());
        sep(&mut q, " AND shard = ");
        q.text(shard.to_owned());
        if prev.is_none() {
            q.raw(")");
        }
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(prev)
    }
}

fn decode(r: &impl ReadRow) -> Result<Row, sqlx::Error> {
    Ok(Row {
        sequence_number: r.opt_text("sequence_number")?,
        written_epoch: to_u64(r.int("written_epoch")?),
        epoch: to_u64(r.int("epoch")?),
        updated_at: r.time("updated_at")?,
    })
}

fn epoch(v: u64) -> Result<i64, sqlx::Error> {
    to_i64(v).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

// The rules, written once: each operation is a few reads and writes above, retried when a
// transaction loses a race.
#[async_trait]
impl<DB: Dialect> CheckpointStore for SqlCheckpointStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    async fn load(&self, stream: &str, shard: &str) -> mq_core::Result<Option<StoredCheckpoint>> {
        let row = with_retries("load checkpoint", || self.select(stream, shard)).await?;
        Ok(row.map(|r| r.into_stored(shard.to_owned())))
    }

    async fn save(
        &self,
        stream: &str,
        shard: &str,
        epoch: u64,
        sequence_number: &str,
    ) -> mq_core::Result<CheckpointOutcome> {
        let seq = normalize_sequence_number(sequence_number)?;
        let e = to_i64(epoch)?;
        if with_retries("save checkpoint", || self.fast_save(stream, shard, e, &seq)).await? {
            return Ok(CheckpointOutcome::Advanced);
        }
        let op = Op::Save {
            epoch,
            sequence_number: seq,
        };
        let prev = self.modify(stream, shard, &op).await?;
        Ok(op.outcome(prev.as_ref()))
    }

    async fn observe_epoch(&self, stream: &str, shard: &str, epoch: u64) -> mq_core::Result<u64> {
        to_i64(epoch)?;
        let prev = self.modify(stream, shard, &Op::Observe { epoch }).await?;
        Ok(prev.map_or(0, |p| p.epoch))
    }

    async fn max_epoch(&self, stream: &str, shard: &str) -> mq_core::Result<u64> {
        Ok(self.load(stream, shard).await?.map_or(0, |c| c.epoch))
    }

    async fn checkpoints(&self, stream: &str) -> mq_core::Result<Vec<StoredCheckpoint>> {
        let mut rows = with_retries("list checkpoints", || self.list(stream)).await?;
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(rows
            .into_iter()
            .map(|(shard, r)| r.into_stored(shard))
            .collect())
    }

    async fn set_checkpoint(
        &self,
        stream: &str,
        shard: &str,
        sequence_number: &str,
    ) -> mq_core::Result<u64> {
        let op = Op::Set {
            sequence_number: normalize_sequence_number(sequence_number)?,
        };
        let prev = self.modify(stream, shard, &op).await?;
        Ok(prev.map_or(0, |p| p.epoch) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: Option<&str>, written: u64, epoch: u64) -> Row {
        Row {
            sequence_number: seq.map(str::to_owned),
            written_epoch: written,
            epoch,
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn ops() {
        let save = Op::Save {
            epoch: 3,
            sequence_number: "20".into(),
        };
        assert!(save.apply(Some(&row(Some("10"), 3, 3))).is_some());
        assert!(save.apply(Some(&row(Some("30"), 3, 3))).is_none());
        assert!(save.apply(Some(&row(Some("10"), 4, 4))).is_none());
        assert_eq!(
            save.outcome(Some(&row(Some("10"), 4, 4))),
            CheckpointOutcome::Fenced
        );
        let observe = Op::Observe { epoch: 5 };
        assert_eq!(observe.apply(Some(&row(Some("1"), 2, 4))).unwrap().epoch, 5);
        assert!(observe.apply(Some(&row(None, 0, 5))).is_none());
        let set = Op::Set {
            sequence_number: "1".into(),
        };
        let r = set.apply(Some(&row(Some("9"), 2, 4))).unwrap();
        assert_eq!((r.written_epoch, r.epoch), (5, 5));
    }
}
