//! [`SqliteDeadLetterStore`]: dead letters in a SQLite table.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mq_core::{BoxError, DeadLetter, DeadLetterSink, MessageId};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite};

use crate::entry::{DeadLetterEntry, EntryId, ReplayMark};
use crate::error::{Error, Result};
use crate::filter::DeadLetterFilter;
use crate::sql::{self, ReadRow, Sql, SqlDeadLetterStore};
use crate::store::DeadLetterStore;

/// Dead letters in a SQLite table (feature `sqlite`); see [`SqlDeadLetterStore`].
///
/// # Examples
///
/// ```no_run
/// # async fn f(pool: sqlx::SqlitePool) -> mq_dlq::Result<()> {
/// use mq_dlq::{DeadLetterStore, SqliteDeadLetterStore};
///
/// let store = SqliteDeadLetterStore::new(pool, mq_dlq::DEFAULT_TABLE)?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
pub type SqliteDeadLetterStore = SqlDeadLetterStore<Sqlite>;

const MIGRATION: &str = include_str!("../migrations/sqlite.sql");

const UPSERT: &str = " ON CONFLICT (queue, message_id) DO UPDATE SET \
    failures = {table}.failures + 1, error = excluded.error, error_text = excluded.error_text, \
    exhausted = excluded.exhausted, attempts = MAX({table}.attempts, excluded.attempts), \
    first_failed_at = MIN({table}.first_failed_at, excluded.first_failed_at), \
    last_failed_at = MAX({table}.last_failed_at, excluded.last_failed_at), \
    consumer_id = excluded.consumer_id";

impl Sql for QueryBuilder<Sqlite> {
    fn sql(&mut self, s: &str) {
        self.push(s);
    }
    fn text(&mut self, v: String) {
        self.push_bind(v);
    }
    fn opt_text(&mut self, v: Option<String>) {
        self.push_bind(v);
    }
    fn int(&mut self, v: i64) {
        self.push_bind(v);
    }
}

impl ReadRow for SqliteRow {
    fn text(&self, col: &str) -> std::result::Result<String, sqlx::Error> {
        self.try_get(col)
    }
    fn opt_text(&self, col: &str) -> std::result::Result<Option<String>, sqlx::Error> {
        self.try_get(col)
    }
    fn int(&self, col: &str) -> std::result::Result<i64, sqlx::Error> {
        self.try_get(col)
    }
    fn opt_int(&self, col: &str) -> std::result::Result<Option<i64>, sqlx::Error> {
        self.try_get(col)
    }
}

fn query() -> QueryBuilder<Sqlite> {
    QueryBuilder::new("")
}

#[async_trait]
impl DeadLetterSink for SqlDeadLetterStore<Sqlite> {
    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), BoxError> {
        Ok(self.insert(letters).await?)
    }
}

#[async_trait]
impl DeadLetterStore for SqlDeadLetterStore<Sqlite> {
    async fn migrate(&self) -> Result<()> {
        for stmt in sql::statements(MIGRATION, &self.table) {
            sqlx::raw_sql(AssertSqlSafe(stmt))
                .execute(&self.pool)
                .await
                .map_err(|e| Error::store("migrate", e))?;
        }
        Ok(())
    }

    async fn insert(&self, letters: Vec<DeadLetter>) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let err = |e| Error::store("insert", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        for letter in letters {
            let mut q = query();
            sql::insert(&mut q, &self.table, &DeadLetterEntry::from_letter(letter))?;
            q.push(UPSERT.replace("{table}", &self.table));
            q.build().execute(&mut *tx).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    async fn list(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterEntry>> {
        let mut q = query();
        sql::select(&mut q, &self.table, filter);
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::store("list", e))?;
        rows.iter().map(sql::read_entry).collect()
    }

    async fn get(&self, id: &EntryId) -> Result<Option<DeadLetterEntry>> {
        let filter = DeadLetterFilter::default().ids([id.clone()]);
        Ok(self.list(&filter).await?.into_iter().next())
    }

    async fn count(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let mut q = query();
        q.push(format!("SELECT COUNT(*) AS n FROM {}", self.table));
        sql::where_clause(&mut q, filter, false);
        let row = q
            .build()
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::store("count", e))?;
        let n = ReadRow::int(&row, "n").map_err(|e| Error::store("count", e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn begin_replay(
        &self,
        id: &EntryId,
        expected_generation: u32,
        mark: &ReplayMark,
    ) -> Result<bool> {
        let mut q = query();
        sql::begin_replay(&mut q, &self.table, id, expected_generation, mark);
        let done = q
            .build()
            .execute(&self.pool)
            .await
            .map_err(|e| Error::store("begin replay", e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_replay(
        &self,
        id: &EntryId,
        message_id: &MessageId,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let err = |e| Error::store("finish replay", e);
        let mut q = query();
        sql::finish_replay(&mut q, &self.table, id, message_id, at);
        let done = q.build().execute(&self.pool).await.map_err(err)?;
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        let mut q = query();
        sql::has_replay(&mut q, &self.table, id, message_id);
        let row = q.build().fetch_one(&self.pool).await.map_err(err)?;
        Ok(ReadRow::int(&row, "n").map_err(err)? > 0)
    }

    async fn purge(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let mut q = query();
        q.push(format!("DELETE FROM {}", self.table));
        sql::where_clause(&mut q, filter, false);
        let done = q
            .build()
            .execute(&self.pool)
            .await
            .map_err(|e| Error::store("purge", e))?;
        Ok(done.rows_affected())
    }
}
