//! [`SqlQueue`]: the [`MessageQueue`](mq_core::MessageQueue) of a SQL database.

use std::fmt;
use std::time::Duration;

use mq_core::CommonOptions;
use mq_core::backend::{PollingQueue, QueueStore};
use sqlx::{Executor, QueryBuilder};

use crate::dialect::{Dialect, Sql};
use crate::options::SqlOptions;
use crate::store::SqlStore;

/// A message queue stored in one SQL table: PostgreSQL ([`PgQueue`](crate::PgQueue)), MySQL or
/// MariaDB ([`MySqlQueue`](crate::MySqlQueue)) or SQLite ([`SqliteQueue`](crate::SqliteQueue)).
///
/// Claims are atomic and lease-based (`FOR UPDATE SKIP LOCKED`, or one write transaction on
/// SQLite), so any number of processes may consume one queue; completions are fenced by the
/// claim. The consumer runtime (retries, timeouts, dead letters, shutdown) is
/// [`PollingQueue`]'s.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use mq_core::{MessageQueue, NewMessage, QueueName};
/// use mq_sql::{SqlOptions, SqliteQueue};
///
/// let queue = SqliteQueue::connect("sqlite://mq.db?mode=rwc", SqlOptions::default()).await?;
/// let emails = QueueName::new("emails")?;
/// queue.register(&emails).await?;
/// queue.publish(&emails, vec![NewMessage::new("welcome", serde_json::json!({"to": "a@b.c"}))]).await?.into_result()?;
/// # Ok(()) }
/// ```
pub struct SqlQueue<DB: sqlx::Database> {
    inner: PollingQueue<SqlStore<DB>>,
}

impl<DB: sqlx::Database> Clone for SqlQueue<DB> {
    fn clone(&self) -> Self {
        SqlQueue {
            inner: self.inner.clone(),
        }
    }
}

impl<DB: sqlx::Database> fmt::Debug for SqlQueue<DB>
where
    SqlStore<DB>: QueueStore,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlQueue")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<DB: sqlx::Database> SqlQueue<DB>
where
    SqlStore<DB>: QueueStore,
{
    /// A queue over an already built `store`.
    pub fn from_store(store: SqlStore<DB>, common: CommonOptions) -> Self {
        SqlQueue {
            inner: PollingQueue::new(store, common),
        }
    }

    /// The store (pool, table).
    pub fn store(&self) -> &SqlStore<DB> {
        self.inner.store()
    }

    /// The consumer runtime this queue forwards to.
    pub fn polling(&self) -> &PollingQueue<SqlStore<DB>> {
        &self.inner
    }
}

impl<DB: Dialect> SqlQueue<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    /// Connects to `url` and prepares the table; see [`SqlStore::connect`] for the URLs, the
    /// schema and the errors. [`SqlOptions::common`] carries the options every backend shares.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # async fn f() -> mq_core::Result<()> {
    /// use mq_core::{MessageQueue, QueueName};
    /// use mq_sql::{PgQueue, SqlOptions};
    ///
    /// let queue = PgQueue::connect("postgres://postgres@localhost/app", SqlOptions::default()).await?;
    /// queue.register(&QueueName::new("emails")?).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, options: SqlOptions) -> mq_core::Result<Self> {
        let common = options.get_common().clone();
        Ok(SqlQueue::from_store(
            SqlStore::connect(url, options).await?,
            common,
        ))
    }

    /// A queue on an existing pool; see [`SqlStore::from_pool`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "sqlite")]
    /// # async fn f() -> mq_core::Result<()> {
    /// use mq_sql::{SqlOptions, SqliteQueue};
    ///
    /// let pool = mq_sql::sqlx::SqlitePool::connect("sqlite::memory:")
    ///     .await
    ///     .map_err(|e| mq_core::Error::backend("sql", "connect", e))?;
    /// let queue = SqliteQueue::from_pool(pool, SqlOptions::default().table("jobs")).await?;
    /// # let _ = queue; Ok(()) }
    /// ```
    pub async fn from_pool(pool: sqlx::Pool<DB>, options: SqlOptions) -> mq_core::Result<Self> {
        let common = options.get_common().clone();
        Ok(SqlQueue::from_store(
            SqlStore::from_pool(pool, options).await?,
            common,
        ))
    }

    /// Deletes (or archives) finished rows (executed, failed, expired, dead-lettered) last
    /// changed more than `older_than` ago, `batch` rows per statement, so the hot table stays
    /// small. Returns the rows removed.
    pub async fn purge_finished(&self, older_than: Duration, batch: usize) -> mq_core::Result<u64> {
        self.store().purge_finished(older_than, batch).await
    }
}

mq_core::delegate_message_queue!(
    impl[DB: sqlx::Database] for SqlQueue<DB> where [SqlStore<DB>: QueueStore] => inner
);
