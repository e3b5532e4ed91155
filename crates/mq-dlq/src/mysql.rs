//! [`MySqlDeadLetterStore`]: dead letters in a MySQL/MariaDB table.

use sqlx::MySql;
use sqlx::mysql::MySqlQueryResult;

use crate::sql::{self, Dialect, SqlDeadLetterStore};

/// Dead letters in a MySQL or MariaDB table (feature `mysql`); see [`SqlDeadLetterStore`].
///
/// # Examples
///
/// ```no_run
/// # async fn f(pool: sqlx::MySqlPool) -> mq_dlq::Result<()> {
/// use mq_dlq::MySqlDeadLetterStore;
/// use mq_core::DeadLetterStore;
///
/// let store = MySqlDeadLetterStore::new(pool, mq_dlq::DEFAULT_TABLE)?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
pub type MySqlDeadLetterStore = SqlDeadLetterStore<MySql>;

impl Dialect for MySql {
    const MIGRATION: &'static str = include_str!("../migrations/mysql.sql");

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

const _: () = sql::assert_store::<MySqlDeadLetterStore>();
