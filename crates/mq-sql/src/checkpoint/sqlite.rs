//! [`SqlCheckpointStore`] on SQLite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row as _, Sqlite, SqliteConnection, SqlitePool};

use super::{Backend, Op, Row, SqlCheckpointStore, to_i64, to_u64};
use crate::error::Error;
use crate::store::statements;

const MIGRATION: (&str, &str) = (
    "sqlite/0001_checkpoints.sql",
    include_str!("../../migrations/sqlite/0001_checkpoints.sql"),
);

impl SqlCheckpointStore<Sqlite> {
    /// A checkpoint store in `table` of `pool`'s database (see
    /// [`DEFAULT_CHECKPOINT_TABLE`](crate::DEFAULT_CHECKPOINT_TABLE)); creates the table if
    /// missing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTableName`] for a bad name, [`Error::Migrate`] when the table cannot be
    /// created.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::SqlitePool::connect("sqlite://mq.db?mode=rwc").await?;
    /// let store = mq_sql::SqliteCheckpointStore::from_pool(pool, mq_sql::DEFAULT_CHECKPOINT_TABLE).await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub async fn from_pool(pool: SqlitePool, table: impl Into<String>) -> crate::Result<Self> {
        let store = Self::build(pool, table.into())?;
        let fail = |migration: &'static str| {
            let table = store.table.clone();
            move |e: sqlx::Error| Error::Migrate {
                migration,
                table,
                source: Box::new(e),
            }
        };
        let mut tx = store
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(fail("begin"))?;
        for stmt in statements(&MIGRATION.1.replace("{table}", &store.table)) {
            sqlx::raw_sql(AssertSqlSafe(stmt))
                .execute(&mut *tx)
                .await
                .map_err(fail(MIGRATION.0))?;
        }
        tx.commit().await.map_err(fail("commit"))?;
        Ok(store)
    }
}

fn decode(r: &SqliteRow) -> Result<Row, sqlx::Error> {
    Ok(Row {
        sequence_number: r.try_get("sequence_number")?,
        written_epoch: to_u64(r.try_get("written_epoch")?),
        epoch: to_u64(r.try_get("epoch")?),
        updated_at: micros_to_time(r.try_get("updated_at")?)?,
    })
}

async fn select(
    conn: &mut SqliteConnection,
    table: &str,
    stream: &str,
    shard: &str,
) -> Result<Option<Row>, sqlx::Error> {
    let sql = format!(
        "SELECT sequence_number, written_epoch, epoch, updated_at FROM {table} \
         WHERE stream = ? AND shard = ?"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(stream)
        .bind(shard)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| decode(&r))
        .transpose()
}

fn micros_to_time(v: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| sqlx::Error::Decode(format!("timestamp {v} out of range").into()))
}

fn epoch(v: u64) -> Result<i64, sqlx::Error> {
    to_i64(v).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

#[async_trait]
impl Backend for SqlCheckpointStore<Sqlite> {
    async fn select(&self, stream: &str, shard: &str) -> Result<Option<Row>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        select(&mut conn, &self.table, stream, shard).await
    }

    async fn list(&self, stream: &str) -> Result<Vec<(String, Row)>, sqlx::Error> {
        let sql = format!(
            "SELECT shard, sequence_number, written_epoch, epoch, updated_at FROM {} \
             WHERE stream = ?",
            self.table
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(stream)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("shard")?, decode(r)?)))
            .collect()
    }

    async fn fast_save(
        &self,
        stream: &str,
        shard: &str,
        epoch: i64,
        sequence_number: &str,
    ) -> Result<bool, sqlx::Error> {
        let sql = format!(
            "UPDATE {} SET sequence_number = ?, sequence_length = ?, written_epoch = ?, \
             epoch = ?, updated_at = ? \
             WHERE stream = ? AND shard = ? AND epoch <= ? AND (sequence_number IS NULL \
             OR sequence_length < ? OR (sequence_length = ? AND sequence_number < ?))",
            self.table
        );
        let len = i32::try_from(sequence_number.len()).unwrap_or(i32::MAX);
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(sequence_number)
            .bind(len)
            .bind(epoch)
            .bind(epoch)
            .bind(Utc::now().timestamp_micros())
            .bind(stream)
            .bind(shard)
            .bind(epoch)
            .bind(len)
            .bind(len)
            .bind(sequence_number)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn modify_once(
        &self,
        stream: &str,
        shard: &str,
        op: &Op,
    ) -> Result<Option<Row>, sqlx::Error> {
        let t = &self.table;
        // one writer at a time: the row read below cannot change before the commit
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let prev = select(&mut tx, t, stream, shard).await?;
        let Some(new) = op.apply(prev.as_ref()) else {
            tx.rollback().await?;
            return Ok(prev);
        };
        // a racing first insert fails with a unique violation and the caller runs it again
        let sql = if prev.is_none() {
            format!(
                "INSERT INTO {t} (sequence_number, sequence_length, written_epoch, epoch, \
                 updated_at, stream, shard) VALUES (?, ?, ?, ?, ?, ?, ?)"
            )
        } else {
            format!(
                "UPDATE {t} SET sequence_number = ?, sequence_length = ?, written_epoch = ?, \
                 epoch = ?, updated_at = ? WHERE stream = ? AND shard = ?"
            )
        };
        sqlx::query(AssertSqlSafe(sql))
            .bind(new.sequence_number.as_deref())
            .bind(new.sequence_length())
            .bind(epoch(new.written_epoch)?)
            .bind(epoch(new.epoch)?)
            .bind(new.updated_at.timestamp_micros())
            .bind(stream)
            .bind(shard)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(prev)
    }
}
