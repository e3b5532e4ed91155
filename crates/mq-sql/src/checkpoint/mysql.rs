//! [`SqlCheckpointStore`] on MySQL and MariaDB.

use async_trait::async_trait;
use chrono::NaiveDateTime;
use sqlx::mysql::MySqlRow;
use sqlx::{Acquire, AssertSqlSafe, MySql, MySqlConnection, MySqlPool, Row as _};

use super::{Backend, Op, Row, SqlCheckpointStore, to_i64, to_u64};
use crate::error::Error;
use crate::store::statements;

const MIGRATION: (&str, &str) = (
    "mysql/0001_checkpoints.sql",
    include_str!("../../migrations/mysql/0001_checkpoints.sql"),
);

impl SqlCheckpointStore<MySql> {
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
    /// let pool = sqlx::MySqlPool::connect("mysql://root@127.0.0.1:3306/app").await?;
    /// let store = mq_sql::MySqlCheckpointStore::from_pool(pool, mq_sql::DEFAULT_CHECKPOINT_TABLE).await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub async fn from_pool(pool: MySqlPool, table: impl Into<String>) -> crate::Result<Self> {
        let store = Self::build(pool, table.into())?;
        let fail = |migration: &'static str| {
            let table = store.table.clone();
            move |e: sqlx::Error| Error::Migrate {
                migration,
                table,
                source: Box::new(e),
            }
        };
        // DDL commits implicitly in MySQL: no transaction
        for stmt in statements(&MIGRATION.1.replace("{table}", &store.table)) {
            sqlx::raw_sql(AssertSqlSafe(stmt))
                .execute(&store.pool)
                .await
                .map_err(fail(MIGRATION.0))?;
        }
        Ok(store)
    }
}

fn decode(r: &MySqlRow) -> Result<Row, sqlx::Error> {
    Ok(Row {
        sequence_number: r.try_get("sequence_number")?,
        written_epoch: to_u64(r.try_get("written_epoch")?),
        epoch: to_u64(r.try_get("epoch")?),
        updated_at: r.try_get::<NaiveDateTime, _>("updated_at")?.and_utc(),
    })
}

async fn select(
    conn: &mut MySqlConnection,
    table: &str,
    stream: &str,
    shard: &str,
    lock: bool,
) -> Result<Option<Row>, sqlx::Error> {
    let sql = format!(
        "SELECT sequence_number, written_epoch, epoch, updated_at FROM {table} \
         WHERE stream = ? AND shard = ?{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(stream)
        .bind(shard)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| decode(&r))
        .transpose()
}

fn epoch(v: u64) -> Result<i64, sqlx::Error> {
    to_i64(v).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

#[async_trait]
impl Backend for SqlCheckpointStore<MySql> {
    async fn select(&self, stream: &str, shard: &str) -> Result<Option<Row>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        select(&mut conn, &self.table, stream, shard, false).await
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
            .bind(chrono::Utc::now().naive_utc())
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
        let mut conn = self.pool.acquire().await?;
        // no gap locks on a missing row: racing first inserts fail with a duplicate key instead
        // of deadlocking
        sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .execute(&mut *conn)
            .await?;
        let mut tx = conn.begin().await?;
        let prev = select(&mut tx, t, stream, shard, true).await?;
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
            .bind(new.updated_at.naive_utc())
            .bind(stream)
            .bind(shard)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(prev)
    }
}
