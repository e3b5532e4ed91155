//! [`ImmediateQueue`]: publishing runs the handler on the spot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::Utc;
use mq_core::backend::{
    ConsumerStopper, HandlerRunner, RegisteredQueues, Settlement, prepare_messages,
};
use mq_core::{
    Batch, BatchReport, CommonOptions, ConsumerHandle, ConsumerInfo, ConsumerOptions, Error,
    ErrorChain, Handler, LifecycleEvent, Message, MessageInfo, MessageQueue, NewMessage, Outcome,
    PublishFailure, PublishReport, QueueName, Result, Status, async_trait,
};
use tokio_util::sync::CancellationToken;

const BACKEND: &str = "immediate";

/// Runs the consumer's handler inside `publish`: nothing is stored.
///
/// What applies of the queue contract: registration, validation, lifecycle events, the handler
/// timeout (the token is cancelled and the handler awaited), per-message outcomes and dead
/// letters. What does not, because nothing is stored: `execute_at` (a message for later runs
/// now, with a warning), `expires_at` before delivery, retries (a message the handler does not
/// acknowledge is returned in [`PublishReport::failed`] as [`Error::NotAcknowledged`], for the
/// publisher to act on), leases, and `consume_batch` (always empty). Publishing with no consumer
/// attached fails with [`Error::NoConsumer`].
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use mq_core::{handler_fn, Batch, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName};
/// use mq_memory::ImmediateQueue;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> mq_core::Result<()> {
/// let queue = ImmediateQueue::new(Default::default());
/// let q = QueueName::new("audit")?;
/// queue.register(&q).await?;
/// let _consumer = queue
///     .consume(&q, Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {})), ConsumerOptions::default())
///     .await?;
/// let report = queue.publish(&q, vec![NewMessage::new("login", serde_json::Value::Null)]).await?;
/// assert!(report.is_complete());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ImmediateQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    common: CommonOptions,
    registered: RegisteredQueues,
    consumers: RwLock<HashMap<QueueName, Attached>>,
    stop: CancellationToken,
    abort: CancellationToken,
    shut_down: AtomicBool,
    next_id: AtomicU64,
}

#[derive(Clone)]
struct Attached {
    id: String,
    runner: Arc<HandlerRunner>,
    options: ConsumerOptions,
    stopper: ConsumerStopper,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ImmediateQueue {
    /// A queue with `common` settings.
    pub fn new(common: CommonOptions) -> Self {
        ImmediateQueue {
            inner: Arc::new(Inner {
                common,
                registered: RegisteredQueues::default(),
                consumers: RwLock::default(),
                stop: CancellationToken::new(),
                abort: CancellationToken::new(),
                shut_down: AtomicBool::new(false),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    fn resolve(&self, queue: &QueueName) -> Result<QueueName> {
        if self.inner.shut_down.load(Ordering::Acquire) {
            return Err(Error::ShutDown { backend: BACKEND });
        }
        self.inner.registered.resolve(&self.inner.common, queue)
    }

    fn attached(&self, queue: &QueueName) -> Option<Attached> {
        let consumers = self
            .inner
            .consumers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        consumers
            .get(queue)
            .filter(|a| !a.stopper.stop_token().is_cancelled())
            .cloned()
    }

    async fn run(
        &self,
        consumer: &Attached,
        messages: Vec<Message>,
        report: &mut PublishReport,
        indexes: &[usize],
    ) {
        let runner = &consumer.runner;
        runner.emit_consumed(&messages);
        let run = runner
            .run(
                Batch::from(messages.clone()),
                consumer.stopper.abort_token(),
                None,
            )
            .await;
        // Nothing is stored, so nothing is retried here: whatever the handler did not
        // acknowledge goes back to the publisher in the report.
        let mut settled = Vec::with_capacity(messages.len());
        let mut letters = Vec::new();
        for (m, index) in messages.into_iter().zip(indexes) {
            let settlement = match run.outcome_of(&m.id) {
                Outcome::Ack => {
                    report.published.push(m.id.clone());
                    Settlement::Ack
                }
                Outcome::Fail { error } | Outcome::DeadLetter { error } => {
                    let status = if matches!(run.outcomes.get(&m.id), Outcome::DeadLetter { .. }) {
                        Status::DeadLettered
                    } else {
                        Status::Failed
                    };
                    report.failed.push(PublishFailure::new(
                        *index,
                        Some(m.id.clone()),
                        Error::NotAcknowledged {
                            id: m.id.clone(),
                            outcome: format!("{status}: {error}"),
                        },
                    ));
                    let mut letter = m.clone();
                    letter.status = status;
                    letters.push(runner.dead_letter(letter, error.clone(), false, None));
                    Settlement::Finish {
                        status,
                        error,
                        exhausted: false,
                    }
                }
                other => {
                    let text = match &other {
                        Outcome::Retry { error: Some(e), .. } => format!("retry requested: {e}"),
                        _ => format!("{} requested", other.kind()),
                    };
                    report.failed.push(PublishFailure::new(
                        *index,
                        Some(m.id.clone()),
                        Error::NotAcknowledged {
                            id: m.id.clone(),
                            outcome: text,
                        },
                    ));
                    continue;
                }
            };
            settled.push((m, settlement));
        }
        let mut dead_lettered = false;
        if let (false, Some(sink)) = (letters.is_empty(), self.inner.common.get_dead_letters()) {
            let count = letters.len();
            match sink.dead_letter(letters).await {
                Ok(()) => dead_lettered = true,
                Err(source) => {
                    // Nothing is stored here: the publish report already lists these messages
                    // as not acknowledged, so the publisher still learns of them.
                    let err = Error::DeadLetter { count, source };
                    tracing::error!(error = %ErrorChain::from_error(&err), "mq: dead-letter store failed");
                }
            }
        }
        for (m, settlement) in &settled {
            runner.emit_settled(m, settlement, run.took, dead_lettered);
        }
    }
}

#[async_trait]
impl MessageQueue for ImmediateQueue {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn register(&self, queue: &QueueName) -> Result<()> {
        if self.inner.shut_down.load(Ordering::Acquire) {
            return Err(Error::ShutDown { backend: BACKEND });
        }
        let q = self.inner.common.get_resolver().resolve(queue)?;
        self.inner.registered.insert(q);
        Ok(())
    }

    async fn publish(&self, queue: &QueueName, messages: Vec<NewMessage>) -> Result<PublishReport> {
        let q = self.resolve(queue)?;
        let mut report = PublishReport::default();
        if messages.is_empty() {
            return Ok(report);
        }
        let consumer = self
            .attached(&q)
            .ok_or_else(|| Error::NoConsumer { queue: q.clone() })?;
        // Taken before re-checking, so shutdown either refuses this publish or waits for it.
        let _in_flight = consumer.stopper.tracker().token();
        if consumer.stopper.stop_token().is_cancelled() {
            return Err(Error::NoConsumer { queue: q });
        }
        let prepared = prepare_messages(&self.inner.common, &q, messages, &mut report.failed);
        if prepared.is_empty() {
            return Ok(report);
        }
        let now = Utc::now();
        let (indexes, mut msgs): (Vec<usize>, Vec<Message>) = prepared.into_iter().unzip();
        let lc = self.inner.common.get_lifecycle();
        for m in &mut msgs {
            if m.execute_at > now {
                tracing::warn!(queue = %q, id = %m.id, execute_at = %m.execute_at,
                    "mq: the immediate queue runs messages at once; execute_at in the future is ignored");
            }
            lc.emit_with(|| LifecycleEvent::Published {
                message: MessageInfo::of(m, BACKEND),
                size_bytes: m.encoded_len(),
            });
            m.status = Status::Processing;
            m.attempts = 1;
            m.processing_started_at = Some(now);
        }
        for (chunk, idx) in msgs
            .chunks(consumer.options.get_batch_size())
            .zip(indexes.chunks(consumer.options.get_batch_size()))
        {
            self.run(&consumer, chunk.to_vec(), &mut report, idx).await;
        }
        report.failed.sort_by_key(|f| f.index);
        Ok(report)
    }

    async fn consume(
        &self,
        queue: &QueueName,
        handler: Arc<dyn Handler>,
        options: ConsumerOptions,
    ) -> Result<ConsumerHandle> {
        let q = self.resolve(queue)?;
        options.validate()?;
        let id = format!(
            "{BACKEND}-{}-{}",
            std::process::id(),
            self.inner.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let stopper = ConsumerStopper::new(
            &self.inner.stop,
            &self.inner.abort,
            options.get_shutdown_grace(),
        );
        let runner = HandlerRunner::for_consumer(
            handler,
            BACKEND,
            q.clone(),
            id.clone(),
            &options,
            &self.inner.common,
        );
        let attached = Attached {
            id: id.clone(),
            runner: Arc::new(runner),
            options,
            stopper: stopper.clone(),
        };
        if let Some(old) = self
            .inner
            .consumers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(q.clone(), attached)
        {
            tracing::warn!(queue = %q, replaced = %old.id, "mq: a second consumer replaces the first on an immediate queue");
            old.stopper.stop_token().cancel();
        }
        let stop = stopper.stop_token().clone();
        stopper.announce(
            self.inner.common.get_lifecycle(),
            ConsumerInfo::worker(id.clone(), q, BACKEND),
            &self.inner.stop,
            || async move { stop.cancelled().await },
        );
        Ok(ConsumerHandle::new(id, stopper))
    }

    async fn consume_batch(
        &self,
        queue: &QueueName,
        _handler: Arc<dyn Handler>,
        _options: &ConsumerOptions,
    ) -> Result<BatchReport> {
        self.resolve(queue)?;
        Ok(BatchReport::default())
    }

    async fn shutdown(&self) -> Result<()> {
        if self.inner.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.stop.cancel();
        let consumers: Vec<Attached> = self
            .inner
            .consumers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, a)| a)
            .collect();
        for c in &consumers {
            c.stopper.stop().await;
        }
        self.inner.common.get_lifecycle().flush().await;
        Ok(())
    }
}
