//! [`InMemoryQueue`]: the polling runtime over [`MemoryStore`].

use std::sync::Arc;

use mq_core::backend::PollingQueue;
use mq_core::{CommonOptions, Message, QueueName, Result};

use crate::store::MemoryStore;

/// Options of [`InMemoryQueue`].
///
/// # Examples
///
/// ```
/// use mq_core::CommonOptions;
/// use mq_memory::InMemoryOptions;
///
/// let opts = InMemoryOptions::default()
///     .finished_capacity(100)
///     .common(CommonOptions::default().max_message_bytes(64 * 1024));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
pub struct InMemoryOptions {
    finished_capacity: usize,
    common: CommonOptions,
}

impl Default for InMemoryOptions {
    fn default() -> Self {
        InMemoryOptions {
            finished_capacity: 10_000,
            common: CommonOptions::default(),
        }
    }
}

impl InMemoryOptions {
    mq_core::__option_setters! {
        /// Failed and dead-lettered messages kept per queue for inspection (default 10,000; the
        /// oldest are dropped first). Configure a dead-letter hook to keep them all.
        finished_capacity(n: usize) n;
        /// Settings shared by every backend (observers, dead letters, ids, names, size limit).
        common(common: CommonOptions) common;
    }
}

/// A queue in process memory.
///
/// Everything the durable backends do, without durability: ordered delivery of ready messages,
/// `execute_at` and `expires_at`, leases and crash recovery for consumer tasks that die, retries
/// with backoff, dead letters, bounded concurrency with no overlapping polls, and a shutdown that
/// waits for in-flight handlers. Messages are lost when the process exits.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use mq_core::{handler_fn, Batch, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName};
/// use mq_memory::{InMemoryOptions, InMemoryQueue};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> mq_core::Result<()> {
/// let queue = InMemoryQueue::new(InMemoryOptions::default());
/// let q = QueueName::new("jobs")?;
/// queue.register(&q).await?;
/// let consumer = queue
///     .consume(&q, Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {})), ConsumerOptions::default())
///     .await?;
/// queue.publish(&q, vec![NewMessage::new("ping", serde_json::Value::Null)]).await?.into_result()?;
/// consumer.stop().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct InMemoryQueue {
    inner: PollingQueue<MemoryStore>,
}

impl InMemoryQueue {
    /// A new, empty queue.
    pub fn new(options: InMemoryOptions) -> Self {
        InMemoryQueue {
            inner: PollingQueue::new(MemoryStore::new(options.finished_capacity), options.common),
        }
    }

    /// The store, for inspection.
    pub fn store(&self) -> &MemoryStore {
        self.inner.store()
    }

    /// The store, shared (for tools that inspect or drive it directly).
    pub fn shared_store(&self) -> Arc<MemoryStore> {
        self.inner.shared_store()
    }

    /// Failed and dead-lettered messages kept for `queue` (after name resolution).
    pub fn finished(&self, queue: &QueueName) -> Result<Vec<Message>> {
        let q = self.inner.common().get_resolver().resolve(queue)?;
        Ok(self.inner.store().finished(&q))
    }
}

impl Default for InMemoryQueue {
    fn default() -> Self {
        InMemoryQueue::new(InMemoryOptions::default())
    }
}

mq_core::delegate_message_queue!(impl for InMemoryQueue => inner);
