//! The queue trait every backend implements, and what its calls return.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::{CancelOutcome, CancelTarget};
use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::message::{MessageId, NewMessage};
use crate::options::ConsumerOptions;
use crate::queue_name::QueueName;

/// A message queue backend: register queues, publish, consume in the background or one batch on
/// demand, shut down.
///
/// Every method resolves its queue argument through the queue's
/// [`QueueNameResolver`](crate::QueueNameResolver). Delivery is at least once: a message is
/// never dropped silently, and a crash mid-batch delivers that batch again.
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use mq_core::{handler_fn, Batch, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName};
///
/// async fn run(queue: &dyn MessageQueue) -> mq_core::Result<()> {
///     let emails = QueueName::new("emails")?;
///     queue.register(&emails).await?;
///     let report = queue
///         .publish(&emails, vec![NewMessage::new("welcome", serde_json::json!({"to": "a@b.c"}))])
///         .await?;
///     assert!(report.is_complete());
///     let handler = Arc::new(handler_fn(|batch: Batch, _ctx: HandlerContext| async move {
///         println!("{} messages", batch.len());
///     }));
///     let consumer = queue.consume(&emails, handler, ConsumerOptions::default()).await?;
///     consumer.stop().await;
///     queue.shutdown().await
/// }
/// ```
#[async_trait]
pub trait MessageQueue: Send + Sync + fmt::Debug + 'static {
    /// The backend's name (`"memory"`, `"immediate"`, `"sql"`, `"mongo"`, `"kinesis"`).
    fn backend(&self) -> &'static str;

    /// Allows publishing to and consuming from `queue`, creating what the backend needs for it.
    async fn register(&self, queue: &QueueName) -> Result<()>;

    /// Stores `messages`. Bad messages (too large, invalid, duplicate id) are reported one by one
    /// in the returned [`PublishReport`] and not stored; the others are. An unregistered queue is
    /// an error and stores nothing. An empty batch is a no-op.
    async fn publish(&self, queue: &QueueName, messages: Vec<NewMessage>) -> Result<PublishReport>;

    /// Starts a background consumer. Stop it with [`ConsumerHandle::stop`] or
    /// [`MessageQueue::shutdown`].
    async fn consume(
        &self,
        queue: &QueueName,
        handler: Arc<dyn Handler>,
        options: ConsumerOptions,
    ) -> Result<ConsumerHandle>;

    /// Claims and handles one batch of at most `options.batch_size` messages now, whether or not a
    /// background consumer runs (for cron-style use).
    async fn consume_batch(
        &self,
        queue: &QueueName,
        handler: Arc<dyn Handler>,
        options: &ConsumerOptions,
    ) -> Result<BatchReport>;

    /// Stops claiming, waits for in-flight handlers up to each consumer's grace period, then
    /// cancels them and releases what they hold. Later calls fail with [`Error::ShutDown`].
    async fn shutdown(&self) -> Result<()>;

    /// Cancels a message that has not finished: a waiting one is never delivered; a running one
    /// is marked cancelled, its completion refused and its handler's token cancelled at the
    /// consumer's next lease renewal. Backends that cannot (Kinesis, immediate) return
    /// [`Error::Unsupported`].
    async fn cancel(&self, queue: &QueueName, target: CancelTarget) -> Result<CancelOutcome> {
        let _ = (queue, target);
        Err(Error::Unsupported {
            backend: self.backend(),
            operation: "cancelling a message",
        })
    }

    /// Stops every consumer of `queue`, in every process, from claiming; in-flight batches
    /// finish. Publishing still works. Backends that cannot return [`Error::Unsupported`].
    async fn pause(&self, queue: &QueueName) -> Result<()> {
        let _ = queue;
        Err(Error::Unsupported {
            backend: self.backend(),
            operation: "pausing a queue",
        })
    }

    /// Lets the consumers of `queue` claim again after [`MessageQueue::pause`].
    async fn resume(&self, queue: &QueueName) -> Result<()> {
        let _ = queue;
        Err(Error::Unsupported {
            backend: self.backend(),
            operation: "resuming a queue",
        })
    }

    /// True while `queue` is paused.
    async fn is_paused(&self, queue: &QueueName) -> Result<bool> {
        let _ = queue;
        Err(Error::Unsupported {
            backend: self.backend(),
            operation: "pausing a queue",
        })
    }
}

mod sealed {
    pub trait Sealed {}
    impl<Q: super::MessageQueue + ?Sized> Sealed for Q {}
}

/// Conveniences on every [`MessageQueue`]: publish one message, or typed payloads.
///
/// Implemented for every queue (and `dyn MessageQueue`); it cannot be implemented elsewhere.
///
/// # Examples
///
/// ```
/// use mq_core::{MessageQueue, MessageQueueExt, NewMessage, QueueName};
///
/// #[derive(serde::Serialize)]
/// struct Welcome { to: &'static str }
///
/// async fn send(queue: &dyn MessageQueue, emails: &QueueName) -> mq_core::Result<()> {
///     let id = queue.publish_one(emails, NewMessage::json("welcome", &Welcome { to: "a@b.c" })?).await?;
///     println!("published {id}");
///     let report = queue.publish_json(emails, "welcome", &[Welcome { to: "b@c.d" }]).await?;
///     report.into_result()?;
///     Ok(())
/// }
/// ```
#[async_trait]
pub trait MessageQueueExt: MessageQueue + sealed::Sealed {
    /// Publishes one message and returns its id; a refused message is the error.
    async fn publish_one(&self, queue: &QueueName, message: NewMessage) -> Result<MessageId> {
        let ids = self.publish(queue, vec![message]).await?.into_result()?;
        ids.into_iter().next().ok_or(Error::Unsupported {
            backend: self.backend(),
            operation: "publishing one message",
        })
    }

    /// Serializes each of `payloads` to JSON and publishes them as messages of `message_type`.
    /// A payload that does not serialize is refused alone ([`Error::Payload`]) in the report.
    async fn publish_json<T: Serialize + Sync>(
        &self,
        queue: &QueueName,
        message_type: &str,
        payloads: &[T],
    ) -> Result<PublishReport> {
        let mut refused = Vec::new();
        let mut messages = Vec::with_capacity(payloads.len());
        let mut indexes = Vec::with_capacity(payloads.len());
        for (index, payload) in payloads.iter().enumerate() {
            match NewMessage::json(message_type, payload) {
                Ok(m) => {
                    messages.push(m);
                    indexes.push(index);
                }
                Err(error) => refused.push(PublishFailure::new(index, None, error)),
            }
        }
        let mut report = if messages.is_empty() {
            PublishReport::default()
        } else {
            self.publish(queue, messages).await?
        };
        // The queue numbered the serializable payloads only: give back their positions in
        // `payloads`.
        for f in &mut report.failed {
            f.index = indexes.get(f.index).copied().unwrap_or(f.index);
        }
        report.failed.extend(refused);
        report.failed.sort_by_key(|f| f.index);
        Ok(report)
    }
}

impl<Q: MessageQueue + ?Sized> MessageQueueExt for Q {}

/// One message publish refused.
#[derive(Debug)]
#[non_exhaustive]
pub struct PublishFailure {
    /// Its position in the published batch.
    pub index: usize,
    /// Its id, when it had or got one.
    pub id: Option<MessageId>,
    /// Why it was not stored.
    pub error: Error,
}

impl PublishFailure {
    /// The refusal of the message at `index`.
    pub fn new(index: usize, id: Option<MessageId>, error: Error) -> Self {
        PublishFailure { index, id, error }
    }
}

/// What a publish stored and what it refused.
///
/// # Examples
///
/// ```
/// use mq_core::PublishReport;
///
/// let report = PublishReport::default();
/// assert!(report.is_complete());
/// assert!(report.into_result().is_ok());
/// ```
#[derive(Debug, Default)]
#[non_exhaustive]
#[must_use = "a publish may store some messages and refuse others: check is_complete() or call into_result()"]
pub struct PublishReport {
    /// Ids stored, in batch order.
    pub published: Vec<MessageId>,
    /// Messages refused.
    pub failed: Vec<PublishFailure>,
}

impl PublishReport {
    /// True when nothing was refused.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }

    /// The stored ids, or the first refusal as an error.
    pub fn into_result(mut self) -> Result<Vec<MessageId>> {
        if self.failed.is_empty() {
            Ok(self.published)
        } else {
            Err(self.failed.swap_remove(0).error)
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "a batch may have retried, failed or lost messages: look at the report"]
pub struct BatchReport {
    /// Messages handed to the handler.
    pub delivered: usize,
    /// Acknowledged.
    pub acked: usize,
    /// Scheduled for another delivery.
    pub retried: usize,
    /// Failed for good (including exhausted).
    pub failed: usize,
    /// Accepted by the dead-letter hook.
    pub dead_lettered: usize,
    /// Found past `expires_at` and marked expired.
    pub expired: usize,
    /// Completions refused because the lease was lost meanwhile.
    pub lease_lost: usize,
    /// The handler timed out or was cancelled.
    pub cancelled: bool,
}

impl BatchReport {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &BatchReport) {
        self.delivered += other.delivered;
        self.acked += other.acked;
        self.retried += other.retried;
        self.failed += other.failed;
        self.dead_lettered += other.dead_lettered;
        self.expired += other.expired;
        self.lease_lost += other.lease_lost;
        self.cancelled |= other.cancelled;
    }
}

/// A running background consumer.
///
/// Dropping the handle leaves the consumer running until the queue shuts down.
///
/// # Examples
///
/// ```no_run
/// # async fn f(handle: mq_core::ConsumerHandle) {
/// println!("consumer {}", handle.consumer_id());
/// handle.stop().await; // waits for in-flight batches (up to the grace period)
/// # }
/// ```
#[derive(Debug)]
#[must_use = "dropping the handle does not stop the consumer; call stop() or shut the queue down"]
pub struct ConsumerHandle {
    consumer_id: String,
    stopper: ConsumerStopper,
}

/// The parts that stop a consumer: a token to stop claiming, a token to cancel handlers, and the
/// tracker of its tasks. Backends build one per consumer and keep a clone to stop it on shutdown.
#[derive(Debug, Clone)]
pub struct ConsumerStopper {
    stop: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
}

impl ConsumerStopper {
    /// Emits [`ConsumerConnected`](crate::LifecycleEvent::ConsumerConnected) for `info`, then
    /// calls `start` (which starts the consumer's work and returns a future that completes when
    /// the work has ended), and emits
    /// [`ConsumerDisconnected`](crate::LifecycleEvent::ConsumerDisconnected) on this consumer's
    /// task tracker once that future completes: with reason `Shutdown` when `queue_stop` (the
    /// queue's shutdown token) is cancelled by then, `Stopped` otherwise.
    pub fn announce<F>(
        &self,
        lifecycle: &crate::LifecycleDispatcher,
        info: crate::ConsumerInfo,
        queue_stop: &CancellationToken,
        start: impl FnOnce() -> F,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        lifecycle.emit_with(|| crate::LifecycleEvent::ConsumerConnected {
            consumer: info.clone(),
        });
        let finished = start();
        let lifecycle = lifecycle.clone();
        let queue_stop = queue_stop.clone();
        self.tracker().spawn(async move {
            finished.await;
            let reason = if queue_stop.is_cancelled() {
                crate::DisconnectReason::Shutdown
            } else {
                crate::DisconnectReason::Stopped
            };
            lifecycle.emit(crate::LifecycleEvent::ConsumerDisconnected {
                consumer: info,
                reason,
            });
        });
    }

    /// A stopper whose tokens are children of `stop_parent` and `abort_parent`, so stopping the
    /// parents (the queue's shutdown) stops this consumer too.
    pub fn new(
        stop_parent: &CancellationToken,
        abort_parent: &CancellationToken,
        grace: Duration,
    ) -> Self {
        ConsumerStopper {
            stop: stop_parent.child_token(),
            abort: abort_parent.child_token(),
            tracker: TaskTracker::new(),
            grace,
        }
    }

    /// Cancelled when the consumer must stop claiming.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Cancelled when in-flight handlers must stop.
    pub fn abort_token(&self) -> &CancellationToken {
        &self.abort
    }

    /// How long [`ConsumerStopper::stop`] waits before cancelling handlers.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The consumer's tasks.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Stops claiming, waits for in-flight work up to the grace period, then cancels handlers and
    /// waits for them to return.
    ///
    /// A handler that ignores its cancellation token is dropped after the consumer's cancel
    /// grace (see [`ConsumerOptions::cancel_grace`](crate::ConsumerOptions::cancel_grace)), so
    /// this returns shortly after the grace period; only a handler blocking its thread keeps it
    /// waiting. Do not call this from inside a handler of the same consumer.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_err()
        {
            self.abort.cancel();
            self.tracker.wait().await;
        }
    }

    /// True once every task has ended.
    pub fn is_finished(&self) -> bool {
        self.tracker.is_closed() && self.tracker.is_empty()
    }
}

impl ConsumerHandle {
    /// A handle for the consumer `consumer_id` stopped by `stopper`.
    pub fn new(consumer_id: impl Into<String>, stopper: ConsumerStopper) -> Self {
        ConsumerHandle {
            consumer_id: consumer_id.into(),
            stopper,
        }
    }

    /// The consumer's id, as seen in lifecycle events and handler contexts.
    pub fn consumer_id(&self) -> &str {
        &self.consumer_id
    }

    /// Stops claiming, waits for in-flight batches up to the grace period, then cancels their
    /// handlers and waits for them to return.
    pub async fn stop(self) {
        self.stopper.stop().await;
    }

    /// True once the consumer has ended (stopped, or its queue shut down).
    pub fn is_finished(&self) -> bool {
        self.stopper.is_finished()
    }

    /// Waits until the consumer has ended without stopping it.
    pub async fn finished(&self) {
        self.stopper.stop.cancelled().await;
        self.stopper.tracker.wait().await;
    }
}
