//! [`MySqlDeadLetterStore`]: dead letters in a MySQL/MariaDB table.

use sqlx::MySql;
use sqlx::mysql::MySqlQueryResult;

use super::{DeadLetterDialect, SqlDeadLetterStore, assert_store};

/// Dead letters in a MySQL or MariaDB table (feature `mysql`); see [`SqlDeadLetterStore`].
///
/// # Examples
///
/// ```no_run
/// # async fn f(pool: mq_sql::sqlx::MySqlPool) -> mq_core::Result<()> {
/// use mq_sql::MySqlDeadLetterStore;
/// use mq_core::DeadLetterStore;
///
/// let store = MySqlDeadLetterStore::new(pool, mq_sql::DEFAULT_DEAD_LETTER_TABLE)?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
pub type MySqlDeadLetterStore = SqlDeadLetterStore<MySql>;

impl DeadLetterDialect for MySql {
    const MIGRATION: &'static str = include_str!("../../migrations/mysql/0001_dead_letters.sql");

    const UPSERT: &'static str = " ON DUPLICATE KEY UPDATE \
        failures = failures + 1, error = VALUES(error), error_text = VALUES(error_text), \
        exhausted = VALUES(exhausted), attempts = GREATEST(attempts, VALUES(attempts)), \
        first_failed_at = LEAST(first_failed_at, VALUES(first_failed_at)), \
        last_failed_at = GREATEST(last_failed_at, VALUES(last_failed_at)), \
        consumer_id = VALUES(consumer_id)";

    fn rows_affected(done: &MySqlQueryResult) -> u64 {
        done.rows_affected()
    }
}

const _: () = assert_store::<MySqlDeadLetterStore>();
