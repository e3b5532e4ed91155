//! [`SqliteDeadLetterStore`]: dead letters in a SQLite table.

use sqlx::Sqlite;
use sqlx::sqlite::SqliteQueryResult;

use super::{DeadLetterDialect, SqlDeadLetterStore, assert_store};

/// Dead letters in a SQLite table (feature `sqlite`); see [`SqlDeadLetterStore`].
///
/// # Examples
///
/// ```no_run
/// # async fn f(pool: mq_sql::sqlx::SqlitePool) -> mq_core::Result<()> {
/// use mq_sql::SqliteDeadLetterStore;
/// use mq_core::DeadLetterStore;
///
/// let store = SqliteDeadLetterStore::new(pool, mq_sql::DEFAULT_DEAD_LETTER_TABLE)?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
pub type SqliteDeadLetterStore = SqlDeadLetterStore<Sqlite>;

impl DeadLetterDialect for Sqlite {
    const MIGRATION: &'static str = include_str!("../../migrations/sqlite/0001_dead_letters.sql");

    const UPSERT: &'static str = " ON CONFLICT (queue, message_id) DO UPDATE SET \
        failures = {table}.failures + 1, error = excluded.error, error_text = excluded.error_text, \
        exhausted = excluded.exhausted, attempts = MAX({table}.attempts, excluded.attempts), \
        first_failed_at = MIN({table}.first_failed_at, excluded.first_failed_at), \
        last_failed_at = MAX({table}.last_failed_at, excluded.last_failed_at), \
        consumer_id = excluded.consumer_id";

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }
}

const _: () = assert_store::<SqliteDeadLetterStore>();
