//! [`MongoQueue`]: the polling runtime over [`MongoStore`].

use std::sync::Arc;

use mongodb::Client;
use mq_core::backend::PollingQueue;
use mq_core::{QueueName, QueueStats, Result};

use crate::connect;
use crate::options::MongoOptions;
use crate::store::MongoStore;

/// A message queue in a MongoDB collection, safe with many consumers on many hosts.
///
/// Claims are atomic and lease-based (see [`MongoStore`]); a consumer that crashes stops
/// renewing, its lease expires and the messages are claimed again. Publishing a batch is one
/// unordered insert that reports exactly which messages were refused (a duplicate id, for
/// example) and stores the rest. Idle consumers wake through a change stream on replica sets and
/// poll otherwise.
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use mq_core::{handler_fn, Batch, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName};
/// use mq_mongo::{MongoOptions, MongoQueue};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let queue = MongoQueue::connect(
///     "mongodb://127.0.0.1:27017/?directConnection=true",
///     MongoOptions::default().database("jobs"),
/// )
/// .await?;
/// let emails = QueueName::new("emails")?;
/// queue.register(&emails).await?;
/// queue.publish(&emails, vec![NewMessage::new("welcome", serde_json::json!({"to": "a@b.c"}))]).await?.into_result()?;
/// let handler = Arc::new(handler_fn(|_batch: Batch, _ctx: HandlerContext| async {}));
/// let consumer = queue.consume(&emails, handler, ConsumerOptions::default()).await?;
/// consumer.stop().await;
/// queue.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MongoQueue {
    inner: PollingQueue<MongoStore>,
}

impl MongoQueue {
    /// Connects to the server at `uri` and checks that it answers within
    /// [`MongoOptions::server_selection_timeout`], then prepares the collection (see
    /// [`MongoQueue::from_client`]).
    ///
    /// # Errors
    ///
    /// [`mq_core::Error::InvalidName`] or [`mq_core::Error::InvalidOption`] for bad options (before
    /// any network call, `uri` included); [`mq_core::Error::Connect`] naming the hosts (never the
    /// credentials) when no server answers in time or it refuses the connection; the errors of
    /// [`MongoQueue::from_client`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use mq_mongo::{MongoOptions, MongoQueue};
    ///
    /// # async fn run() -> mq_core::Result<()> {
    /// let opts = MongoOptions::default().server_selection_timeout(Duration::from_secs(2));
    /// let queue = MongoQueue::connect("mongodb://db1:27017,db2:27017/?replicaSet=rs0", opts).await?;
    /// # let _ = queue;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(uri: &str, options: MongoOptions) -> Result<Self> {
        let client = connect::client(uri, &options).await?;
        connect::build_or_shut_down(client, async |c| Self::from_client(c, options).await).await
    }

    /// A queue on a client the caller built (its own timeouts apply). Creates the indexes of the
    /// collection when missing, or, under [`MongoOptions::create_schema`]`(false)`, checks that
    /// the collection and its indexes exist and writes nothing.
    ///
    /// # Errors
    ///
    /// [`mq_core::Error::InvalidName`] or [`mq_core::Error::InvalidOption`] for bad options;
    /// [`mq_core::Error::Backend`] when the indexes cannot be created, or are missing (its
    /// source is then [`crate::Error::MissingSchema`], naming the collection or index).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mq_mongo::{MongoOptions, MongoQueue, mongodb};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017").await?;
    /// // A read-only look at the queues: nothing is created, nothing is written.
    /// let queue = MongoQueue::from_client(client, MongoOptions::default().create_schema(false)).await?;
    /// for stats in queue.queue_stats(None).await? {
    ///     println!("{}: {} waiting", stats.queue, stats.count(mq_core::Status::Scheduled));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn from_client(client: Client, options: MongoOptions) -> Result<Self> {
        options.validate()?;
        let common = options.get_common().clone();
        let store = MongoStore::new(client, options);
        store.prepare_schema().await?;
        Ok(MongoQueue {
            inner: PollingQueue::new(store, common),
        })
    }

    /// Messages per status, the age of the oldest ready message and the expired leases of
    /// `queue`, or of every queue in the collection when `None`, in queue-name order. Read-only:
    /// one aggregation.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mq_core::{QueueName, Status};
    ///
    /// # async fn run(queue: mq_mongo::MongoQueue) -> mq_core::Result<()> {
    /// let emails = QueueName::new("emails")?;
    /// let stats = queue.queue_stats(Some(&emails)).await?;
    /// println!("{} failed, {} stuck", stats[0].count(Status::Failed), stats[0].expired_leases);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn queue_stats(&self, queue: Option<&QueueName>) -> Result<Vec<QueueStats>> {
        self.inner.queue_stats(queue).await
    }

    /// The store, for inspection.
    pub fn store(&self) -> &MongoStore {
        self.inner.store()
    }

    /// The store, shared (for tools that inspect or drive it directly).
    pub fn shared_store(&self) -> Arc<MongoStore> {
        self.inner.shared_store()
    }
}

// Shutdown stops consumers (waiting for in-flight handlers up to their grace period), then the
// store closes its change-stream task.
mq_core::delegate_message_queue!(impl for MongoQueue => inner);
