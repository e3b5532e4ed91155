//! [`PgDeadLetterStore`]: dead letters in a PostgreSQL table.

use sqlx::Postgres;
use sqlx::postgres::PgQueryResult;

use crate::sql::{self, Dialect, SqlDeadLetterStore};

/// Dead letters in a PostgreSQL table (feature `postgres`); see [`SqlDeadLetterStore`].
///
/// # Examples
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> mq_dlq::Result<()> {
/// use mq_dlq::PgDeadLetterStore;
/// use mq_core::DeadLetterStore;
///
/// let store = PgDeadLetterStore::new(pool, mq_dlq::DEFAULT_TABLE)?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
pub type PgDeadLetterStore = SqlDeadLetterStore<Postgres>;

impl Dialect for Postgres {
    const MIGRATION: &'static str = include_str!("../migrations/postgres.sql");

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

const _: () = sql::assert_store::<PgDeadLetterStore>();
