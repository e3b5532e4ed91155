//! [`SqlQueue`]: the [`MessageQueue`] of a SQL database.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use mq_core::backend::{PollingQueue, QueueStore};
use mq_core::{
    BatchReport, CommonOptions, ConsumerHandle, ConsumerOptions, Handler, MessageQueue, NewMessage,
    PublishReport, QueueName,
};

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
/// use mq_core::{CommonOptions, MessageQueue, NewMessage, QueueName};
/// use mq_sql::{SqlOptions, SqliteQueue};
///
/// let queue = SqliteQueue::connect("sqlite://mq.db?mode=rwc", SqlOptions::default(), CommonOptions::default()).await?;
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

#[async_trait]
impl<DB: sqlx::Database> MessageQueue for SqlQueue<DB>
where
    SqlStore<DB>: QueueStore,
{
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn register(&self, queue: &QueueName) -> mq_core::Result<()> {
        self.inner.register(queue).await
    }

    async fn publish(
        &self,
        queue: &QueueName,
        messages: Vec<NewMessage>,
    ) -> mq_core::Result<PublishReport> {
        self.inner.publish(queue, messages).await
    }

    async fn consume(
        &self,
        queue: &QueueName,
        handler: Arc<dyn Handler>,
        options: ConsumerOptions,
    ) -> mq_core::Result<ConsumerHandle> {
        self.inner.consume(queue, handler, options).await
    }

    async fn consume_batch(
        &self,
        queue: &QueueName,
        handler: Arc<dyn Handler>,
        options: &ConsumerOptions,
    ) -> mq_core::Result<BatchReport> {
        self.inner.consume_batch(queue, handler, options).await
    }

    async fn shutdown(&self) -> mq_core::Result<()> {
        let r = self.inner.shutdown().await;
        self.inner.store().close().await;
        r
    }
}
