//! [`MongoQueue`]: the polling runtime over [`MongoStore`].

use std::sync::Arc;
use std::time::Duration;

use mongodb::Client;
use mongodb::bson::doc;
use mongodb::options::ClientOptions;
use mq_core::backend::PollingQueue;
use mq_core::{
    BatchReport, CommonOptions, ConsumerHandle, ConsumerOptions, Handler, MessageQueue, NewMessage,
    PublishReport, QueueName, async_trait,
};

use crate::error::{Error, Result};
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
/// use mq_core::{handler_fn, Batch, CommonOptions, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName};
/// use mq_mongo::{MongoOptions, MongoQueue};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let queue = MongoQueue::connect(
///     "mongodb://127.0.0.1:27017/?directConnection=true",
///     MongoOptions::default().database("jobs"),
///     CommonOptions::default(),
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
    /// [`MongoOptions::server_selection_timeout`]; the error names the hosts (never the
    /// credentials).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use mq_core::CommonOptions;
    /// use mq_mongo::{MongoOptions, MongoQueue};
    ///
    /// # async fn run() -> Result<(), mq_mongo::Error> {
    /// let opts = MongoOptions::default().server_selection_timeout(Duration::from_secs(2));
    /// let queue = MongoQueue::connect("mongodb://db1:27017,db2:27017/?replicaSet=rs0", opts, CommonOptions::default()).await?;
    /// # let _ = queue;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(uri: &str, options: MongoOptions, common: CommonOptions) -> Result<Self> {
        options.validate()?;
        let timeout = options.get_server_selection_timeout();
        // Parsing may resolve DNS (mongodb+srv): bound it too.
        let parsed = tokio::time::timeout(timeout, ClientOptions::parse(uri)).await;
        let mut co = match parsed {
            Ok(Ok(co)) => co,
            Ok(Err(e)) => {
                return Err(Error::InvalidUri {
                    source: Box::new(e),
                });
            }
            Err(_) => {
                return Err(Error::Unreachable {
                    hosts: "(DNS lookup of the connection string)".into(),
                    timeout,
                    source: Box::new(mongodb::error::Error::custom(
                        "resolving the connection string timed out",
                    )),
                });
            }
        };
        co.server_selection_timeout = Some(timeout);
        co.connect_timeout = Some(options.get_connect_timeout());
        if co.app_name.is_none() {
            co.app_name = Some("mq-mongo".into());
        }
        let hosts = co
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let client = Client::with_options(co).map_err(|e| Error::InvalidUri {
            source: Box::new(e),
        })?;
        // The driver connects lazily; one ping turns "unreachable" into an error here.
        let db = client.database(options.get_database());
        let ping = db.run_command(doc! { "ping": 1 });
        match tokio::time::timeout(timeout + Duration::from_millis(500), ping).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if matches!(&*e.kind, mongodb::error::ErrorKind::ServerSelection { .. }) => {
                return Err(Error::Unreachable {
                    hosts,
                    timeout,
                    source: Box::new(e),
                });
            }
            Ok(Err(e)) => return Err(Error::driver("connect", e)),
            Err(_) => {
                return Err(Error::Unreachable {
                    hosts,
                    timeout,
                    source: Box::new(mongodb::error::Error::custom("ping timed out")),
                });
            }
        }
        Self::from_client(client, options, common)
    }

    /// A queue on an existing client (its own timeouts apply).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mq_core::CommonOptions;
    /// use mq_mongo::{MongoOptions, MongoQueue};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017").await?;
    /// let queue = MongoQueue::from_client(client, MongoOptions::default(), CommonOptions::default())?;
    /// # let _ = queue;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_client(
        client: Client,
        options: MongoOptions,
        common: CommonOptions,
    ) -> Result<Self> {
        let store = MongoStore::new(client, options)?;
        Ok(MongoQueue {
            inner: PollingQueue::new(store, common),
        })
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

#[async_trait]
impl MessageQueue for MongoQueue {
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

    /// Stops consumers (waiting for in-flight handlers up to their grace period), then the
    /// change-stream task.
    async fn shutdown(&self) -> mq_core::Result<()> {
        let res = self.inner.shutdown().await;
        self.inner.store().close().await;
        res
    }
}
