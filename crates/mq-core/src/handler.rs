//! Handlers: what a consumer runs for each batch, and the per-message outcomes they return.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::dead_letter::ErrorChain;
use crate::error::BoxError;
use crate::message::{Message, MessageId};
use crate::queue_name::QueueName;

/// The messages of one delivery, shared cheaply between the consumer and the handler.
///
/// Dereferences to `[Message]`.
///
/// # Examples
///
/// ```
/// use mq_core::{Batch, Message, MessageId, QueueName};
///
/// let m = Message::new(MessageId::new("a")?, QueueName::new("q")?, "t",
///     serde_json::Value::Null, chrono::Utc::now());
/// let batch = Batch::from(vec![m]);
/// assert_eq!(batch.len(), 1);
/// assert_eq!(batch[0].id.as_str(), "a");
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Batch(Arc<Vec<Message>>);

impl From<Vec<Message>> for Batch {
    fn from(v: Vec<Message>) -> Self {
        Batch(Arc::new(v))
    }
}

impl Batch {
    /// The messages, moved out when this is the last copy of the batch and cloned otherwise.
    pub fn into_messages(self) -> Vec<Message> {
        Arc::try_unwrap(self.0).unwrap_or_else(|shared| (*shared).clone())
    }

    /// The `mq.batch` tracing span a consumer runs the handler in, so that everything the handler
    /// logs carries where the batch came from: `backend`, `queue`, `shard` (Kinesis), `size`,
    /// `message_ids` (the first 100, comma-separated) and `log_context`, the messages'
    /// [`Metadata::log_context`](crate::Metadata) pairs as `key=value` (distinct pairs of the
    /// whole batch, in key order).
    ///
    /// Every backend uses it; a custom consumer can too.
    ///
    /// # Examples
    ///
    /// ```
    /// use mq_core::{Batch, Message, MessageId, QueueName};
    ///
    /// let mut m = Message::new(
    ///     MessageId::new("a")?, QueueName::new("emails")?, "welcome",
    ///     serde_json::Value::Null, chrono::Utc::now(),
    /// );
    /// m.metadata.log_context.insert("tenant".into(), "acme".into());
    /// let span = Batch::from(vec![m]).tracing_span("memory", None);
    /// let _entered = span.enter(); // handler logs now carry queue, ids and tenant=acme
    /// # Ok::<(), mq_core::Error>(())
    /// ```
    pub fn tracing_span(&self, backend: &'static str, shard: Option<&str>) -> tracing::Span {
        const MAX_IDS: usize = 100;
        let queue = self.0.first().map(|m| m.queue.as_str()).unwrap_or_default();
        let mut ids = String::new();
        for (i, m) in self.0.iter().take(MAX_IDS).enumerate() {
            if i > 0 {
                ids.push(',');
            }
            ids.push_str(m.id.as_str());
        }
        if self.0.len() > MAX_IDS {
            ids.push_str(",...");
        }
        let pairs: std::collections::BTreeSet<(&str, &str)> = self
            .0
            .iter()
            .flat_map(|m| m.metadata.log_context.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let log_context = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::info_span!(
            "mq.batch",
            backend,
            queue,
            shard = shard.unwrap_or_default(),
            size = self.0.len(),
            message_ids = %ids,
            log_context = %log_context,
        )
    }
}

impl Deref for Batch {
    type Target = [Message];
    fn deref(&self) -> &[Message] {
        &self.0
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|m| &m.id))
            .finish()
    }
}

/// What a handler knows about the delivery it runs: queue, consumer, shard and a cancellation
/// token.
///
/// The token is cancelled when the handler runs past its timeout, when the consumer shuts down
/// past its grace period, or when the consumer loses its lease. A handler should return soon after;
/// the consumer waits for it (keeping its lease) instead of abandoning it, so the batch never runs
/// twice at once.
///
/// # Examples
///
/// ```
/// use mq_core::{HandlerContext, QueueName};
/// use tokio_util::sync::CancellationToken;
///
/// let token = CancellationToken::new();
/// let ctx = HandlerContext::new(QueueName::new("q")?, "worker-1", None, token.clone(), None);
/// assert!(!ctx.is_cancelled());
/// token.cancel();
/// assert!(ctx.is_cancelled());
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct HandlerContext(Arc<ContextInner>);

#[derive(Debug)]
struct ContextInner {
    queue: QueueName,
    consumer_id: String,
    shard_id: Option<String>,
    token: CancellationToken,
    deadline: Option<Instant>,
    /// Messages the handler completed itself, in its own transaction; shared with the
    /// consumer's lease renewal.
    completed: CompletedMarks,
}

/// The messages a handler marked completed, shared between its context and the consumer that
/// renews its lease (a renewal refused for a marked message is no lost lease).
pub(crate) type CompletedMarks = Arc<Mutex<HashSet<MessageId>>>;

impl HandlerContext {
    /// A context; backends build it, tests may too.
    pub fn new(
        queue: QueueName,
        consumer_id: impl Into<String>,
        shard_id: Option<String>,
        token: CancellationToken,
        deadline: Option<Instant>,
    ) -> Self {
        HandlerContext::with_marks(
            queue,
            consumer_id,
            shard_id,
            token,
            deadline,
            CompletedMarks::default(),
        )
    }

    /// A context whose completion marks land in `marks`.
    pub(crate) fn with_marks(
        queue: QueueName,
        consumer_id: impl Into<String>,
        shard_id: Option<String>,
        token: CancellationToken,
        deadline: Option<Instant>,
        marks: CompletedMarks,
    ) -> Self {
        HandlerContext(Arc::new(ContextInner {
            queue,
            consumer_id: consumer_id.into(),
            shard_id,
            token,
            deadline,
            completed: marks,
        }))
    }

    /// The (resolved) queue name.
    pub fn queue(&self) -> &QueueName {
        &self.0.queue
    }

    /// The consumer running the handler (`<backend>-<pid>-<n>`, or `<instance>:<shard>` on
    /// Kinesis).
    pub fn consumer_id(&self) -> &str {
        &self.0.consumer_id
    }

    /// The Kinesis shard of the batch.
    pub fn shard_id(&self) -> Option<&str> {
        self.0.shard_id.as_deref()
    }

    /// The token to watch.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.0.token
    }

    /// True once the handler should stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.token.is_cancelled()
    }

    /// Completes when the handler should stop.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.0.token.cancelled()
    }

    /// When the handler's timeout cancels the token.
    pub fn deadline(&self) -> Option<Instant> {
        self.0.deadline
    }

    /// Records that the handler completed message `id` itself, inside its own database
    /// transaction (the SQL backend's `complete_in_tx` calls this for you). When the consumer's
    /// own completion of the message is then refused because the message is completed
    /// already, it counts as acknowledged instead of as a lost lease. If the transaction rolled
    /// back, the message is still held and the handler's outcome settles it as usual. Backends
    /// that cannot complete a message in a handler's transaction never see a mark.
    ///
    /// # Examples
    ///
    /// ```
    /// use mq_core::{HandlerContext, MessageId, QueueName};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let ctx = HandlerContext::new(QueueName::new("q")?, "worker-1", None, CancellationToken::new(), None);
    /// let id = MessageId::new("m1")?;
    /// ctx.mark_completed(id.clone());
    /// assert!(ctx.completed().contains(&id));
    /// # Ok::<(), mq_core::Error>(())
    /// ```
    pub fn mark_completed(&self, id: MessageId) {
        self.completed_set().insert(id);
    }

    /// The messages marked with [`mark_completed`](Self::mark_completed) so far.
    pub fn completed(&self) -> HashSet<MessageId> {
        self.completed_set().clone()
    }

    fn completed_set(&self) -> std::sync::MutexGuard<'_, HashSet<MessageId>> {
        self.0.completed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What happens to one message after its handler ran.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mq_core::Outcome;
///
/// let later = Outcome::retry_after(Duration::from_secs(5));
/// let broken = Outcome::fail("payload has no customer id");
/// assert!(matches!(later, Outcome::Retry { after: Some(_), .. }));
/// assert!(matches!(broken, Outcome::Fail { .. }));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done: the message is marked executed.
    Ack,
    /// Deliver again after `after` (the retry policy's backoff when `None`), unless attempts are
    /// exhausted, in which case the message fails and goes to the dead-letter hook.
    Retry {
        /// Delay before the next delivery.
        after: Option<Duration>,
        /// Why, if the handler said.
        error: Option<ErrorChain>,
    },
    /// Failed for good: marked failed and handed to the dead-letter hook.
    Fail {
        /// Why.
        error: ErrorChain,
    },
    /// Handed straight to the dead-letter hook and marked dead-lettered.
    DeadLetter {
        /// Why.
        error: ErrorChain,
    },
}

impl Outcome {
    /// Retry after the policy's backoff.
    pub fn retry() -> Self {
        Outcome::Retry {
            after: None,
            error: None,
        }
    }

    /// Retry after `after`.
    pub fn retry_after(after: Duration) -> Self {
        Outcome::Retry {
            after: Some(after),
            error: None,
        }
    }

    /// Fail permanently because of `reason`.
    pub fn fail(reason: impl fmt::Display) -> Self {
        Outcome::Fail {
            error: ErrorChain::msg(reason),
        }
    }

    /// Dead-letter because of `reason`.
    pub fn dead_letter(reason: impl fmt::Display) -> Self {
        Outcome::DeadLetter {
            error: ErrorChain::msg(reason),
        }
    }

    /// A short name (`"ack"`, `"retry"`, `"fail"`, `"dead_letter"`).
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Retry { .. } => "retry",
            Outcome::Fail { .. } => "fail",
            Outcome::DeadLetter { .. } => "dead_letter",
        }
    }
}

/// The outcomes of a batch: one default plus any per-message exceptions.
///
/// # Examples
///
/// ```
/// use mq_core::{MessageId, Outcome, Outcomes};
///
/// let bad = MessageId::new("m2")?;
/// let outcomes = Outcomes::ack_all().set(bad.clone(), Outcome::fail("no such user"));
/// assert_eq!(outcomes.get(&bad).kind(), "fail");
/// assert_eq!(outcomes.get(&MessageId::new("m1")?).kind(), "ack");
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Outcomes {
    default: Outcome,
    by_id: HashMap<MessageId, Outcome>,
}

impl Outcomes {
    /// Every message gets `outcome` unless set otherwise.
    pub fn all(outcome: Outcome) -> Self {
        Outcomes {
            default: outcome,
            by_id: HashMap::new(),
        }
    }

    /// Every message is acknowledged unless set otherwise.
    pub fn ack_all() -> Self {
        Outcomes::all(Outcome::Ack)
    }

    /// Every message is retried (after the policy's backoff) because of `error`.
    pub fn retry_all(error: impl Into<ErrorChain>) -> Self {
        Outcomes::all(Outcome::Retry {
            after: None,
            error: Some(error.into()),
        })
    }

    /// Sets the outcome of one message.
    pub fn set(mut self, id: MessageId, outcome: Outcome) -> Self {
        self.by_id.insert(id, outcome);
        self
    }

    /// Sets the outcome of one message in place.
    pub fn insert(&mut self, id: MessageId, outcome: Outcome) {
        self.by_id.insert(id, outcome);
    }

    /// The outcome of `id`.
    pub fn get(&self, id: &MessageId) -> &Outcome {
        self.by_id.get(id).unwrap_or(&self.default)
    }
}

impl From<BoxError> for Outcomes {
    fn from(e: BoxError) -> Self {
        Outcomes::retry_all(ErrorChain::from(e))
    }
}

/// Anything a handler may return: [`Outcomes`], `()`, or a `Result` of either. `Ok(())` acks
/// every message; `Err(e)` retries every message with `e` as the error.
///
/// # Examples
///
/// ```
/// use mq_core::IntoOutcomes;
///
/// let ok: Result<(), std::io::Error> = Ok(());
/// assert_eq!(ok.into_outcomes().get(&mq_core::MessageId::new("x")?).kind(), "ack");
/// let err: Result<(), std::io::Error> = Err(std::io::Error::other("db down"));
/// assert_eq!(err.into_outcomes().get(&mq_core::MessageId::new("x")?).kind(), "retry");
/// # Ok::<(), mq_core::Error>(())
/// ```
pub trait IntoOutcomes {
    /// Converts into per-message outcomes.
    fn into_outcomes(self) -> Outcomes;
}

impl IntoOutcomes for Outcomes {
    fn into_outcomes(self) -> Outcomes {
        self
    }
}

impl IntoOutcomes for () {
    fn into_outcomes(self) -> Outcomes {
        Outcomes::ack_all()
    }
}

impl<E: Into<BoxError>> IntoOutcomes for Result<(), E> {
    fn into_outcomes(self) -> Outcomes {
        match self {
            Ok(()) => Outcomes::ack_all(),
            Err(e) => Outcomes::from(e.into()),
        }
    }
}

impl<E: Into<BoxError>> IntoOutcomes for Result<Outcomes, E> {
    fn into_outcomes(self) -> Outcomes {
        match self {
            Ok(o) => o,
            Err(e) => Outcomes::from(e.into()),
        }
    }
}

/// Processes batches of messages.
///
/// Most handlers are closures wrapped by [`handler_fn`]. A handler that panics is treated as an
/// error: every message of the batch is retried.
///
/// # Examples
///
/// ```
/// use mq_core::{async_trait, Batch, Handler, HandlerContext, Outcome, Outcomes};
///
/// #[derive(Debug)]
/// struct Mailer;
///
/// #[async_trait]
/// impl Handler for Mailer {
///     async fn handle(&self, batch: Batch, ctx: HandlerContext) -> Outcomes {
///         let mut out = Outcomes::ack_all();
///         for m in batch.iter() {
///             if ctx.is_cancelled() {
///                 out.insert(m.id.clone(), Outcome::retry());
///             }
///         }
///         out
///     }
/// }
/// ```
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Processes `batch` and says what happens to each message.
    async fn handle(&self, batch: Batch, ctx: HandlerContext) -> Outcomes;
}

/// A [`Handler`] made from a closure; see [`handler_fn`].
#[derive(Clone)]
pub struct HandlerFn<F>(F);

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandlerFn")
    }
}

/// Makes a [`Handler`] from an async closure returning anything [`IntoOutcomes`].
///
/// # Examples
///
/// ```
/// use mq_core::{handler_fn, Batch, HandlerContext};
///
/// let handler = handler_fn(|batch: Batch, _ctx: HandlerContext| async move {
///     for m in batch.iter() {
///         println!("{} {}", m.message_type, m.payload);
///     }
///     Ok::<(), std::io::Error>(())
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<F, Fut, R>(f: F) -> HandlerFn<F>
where
    F: Fn(Batch, HandlerContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoOutcomes,
{
    HandlerFn(f)
}

#[async_trait]
impl<F, Fut, R> Handler for HandlerFn<F>
where
    F: Fn(Batch, HandlerContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoOutcomes,
{
    async fn handle(&self, batch: Batch, ctx: HandlerContext) -> Outcomes {
        (self.0)(batch, ctx).await.into_outcomes()
    }
}
