//! [`PgDeadLetterStore`]: dead letters in a PostgreSQL table.

use sqlx::Postgres;
use sqlx::postgres::PgQueryResult;

use super::{DeadLetterDialect, SqlDeadLetterStore, assert_store};

/// Dead letters in a PostgreSQL table (feature `postgres`); see [`SqlDeadLetterStore`].
///
/// # Examples
///
/// ```no_run
/// # async fn f(pool: mq_sql::sqlx::PgPool) -> mq_core::Result<()> {
/// use mq_sql::PgDeadLetterStore;
/// use mq_core::DeadLetterStore;
///
/// let store = PgDeadLetterStore::new(pool, mq_sql::DEFAULT_DEAD_LETTER_TABLE)?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
pub type PgDeadLetterStore = SqlDeadLetterStore<Postgres>;

impl DeadLetterDialect for Postgres {
    const MIGRATION: &'static str = include_str!("../../migrations/postgres/0001_dead_letters.sql");

    const UPSERT: &'static str = " ON CONFLICT (queue, message_id) DO UPDATE SET \
        failures = {table}.failures + 1, error = excluded.error, error_text = excluded.error_text, \
        exhausted = excluded.exhausted, attempts = GREATEST({table}.attempts, excluded.attempts), \
        first_failed_at = LEAST({table}.first_failed_at, excluded.first_failed_at), \
        last_failed_at = GREATEST({table}.last_failed_at, excluded.last_failed_at), \
        consumer_id = excluded.consumer_id";

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }
}

const _: () = assert_store::<PgDeadLetterStore>();
