//! [`SqlCheckpointStore`] on PostgreSQL.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Row as _};

use super::{Backend, Op, Row, SqlCheckpointStore, to_i64, to_u64};
use crate::error::Error;
use crate::store::statements;

const MIGRATION: (&str, &str) = (
    "postgres/0001_checkpoints.sql",
    include_str!("../../migrations/postgres/0001_checkpoints.sql"),
);

impl SqlCheckpointStore<Postgres> {
    /// A checkpoint store in `table` of `pool`'s database (see
    /// [`DEFAULT_CHECKPOINT_TABLE`](crate::DEFAULT_CHECKPOINT_TABLE)); creates the table if
    /// missing, under an advisory lock.
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
    /// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/app").await?;
    /// let store = mq_sql::PgCheckpointStore::from_pool(pool, mq_sql::DEFAULT_CHECKPOINT_TABLE).await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub async fn from_pool(pool: PgPool, table: impl Into<String>) -> crate::Result<Self> {
        let store = Self::build(pool, table.into())?;
        let fail = |migration: &'static str| {
            let table = store.table.clone();
            move |e: sqlx::Error| Error::Migrate {
                migration,
                table,
                source: Box::new(e),
            }
        };
        let mut tx = store.pool.begin().await.map_err(fail("begin"))?;
        // Concurrent CREATE ... IF NOT EXISTS can still collide in the catalog: serialize them.
        sqlx::query("SELECT pg_advisory_xact_lock(7311002)")
            .execute(&mut *tx)
            .await
            .map_err(fail("lock"))?;
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

fn decode(r: &PgRow) -> Result<Row, sqlx::Error> {
    Ok(Row {
        sequence_number: r.try_get("sequence_number")?,
        written_epoch: to_u64(r.try_get("written_epoch")?),
        epoch: to_u64(r.try_get("epoch")?),
        updated_at: r.try_get("updated_at")?,
    })
}

async fn select(
    conn: &mut PgConnection,
    table: &str,
    stream: &str,
    shard: &str,
    lock: bool,
) -> Result<Option<Row>, sqlx::Error> {
    let sql = format!(
        "SELECT sequence_number, written_epoch, epoch, updated_at FROM {table} \
         WHERE stream = $1 AND shard = $2{}",
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
impl Backend for SqlCheckpointStore<Postgres> {
    async fn select(&self, stream: &str, shard: &str) -> Result<Option<Row>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        select(&mut conn, &self.table, stream, shard, false).await
    }

    async fn list(&self, stream: &str) -> Result<Vec<(String, Row)>, sqlx::Error> {
        let sql = format!(
            "SELECT shard, sequence_number, written_epoch, epoch, updated_at FROM {} \
             WHERE stream = $1",
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
            "UPDATE {} SET sequence_number = $3, sequence_length = $4, written_epoch = $5, \
             epoch = $5, updated_at = $6 \
             WHERE stream = $1 AND shard = $2 AND epoch <= $5 AND (sequence_number IS NULL \
             OR sequence_length < $4 OR (sequence_length = $4 AND sequence_number < $3))",
            self.table
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(stream)
            .bind(shard)
            .bind(sequence_number)
            .bind(i32::try_from(sequence_number.len()).unwrap_or(i32::MAX))
            .bind(epoch)
            .bind(chrono::Utc::now())
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
        let mut tx = self.pool.begin().await?;
        let prev = select(&mut tx, t, stream, shard, true).await?;
        let Some(new) = op.apply(prev.as_ref()) else {
            tx.rollback().await?;
            return Ok(prev);
        };
        // a racing first insert fails with a unique violation and the caller runs it again
        let sql = if prev.is_none() {
            format!(
                "INSERT INTO {t} (sequence_number, sequence_length, written_epoch, epoch, \
                 updated_at, stream, shard) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            )
        } else {
            format!(
                "UPDATE {t} SET sequence_number = $1, sequence_length = $2, written_epoch = $3, \
                 epoch = $4, updated_at = $5 WHERE stream = $6 AND shard = $7"
            )
        };
        sqlx::query(AssertSqlSafe(sql))
            .bind(new.sequence_number.as_deref())
            .bind(new.sequence_length())
            .bind(epoch(new.written_epoch)?)
            .bind(epoch(new.epoch)?)
            .bind(new.updated_at)
            .bind(stream)
            .bind(shard)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(prev)
    }
}
