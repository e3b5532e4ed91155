//! The storage contract of polling backends: insert, claim with a lease, renew, complete.
//!
//! A backend that implements [`QueueStore`] gets the whole [`MessageQueue`](crate::MessageQueue)
//! behaviour (validation, ids, events, retries, dead letters, timeouts, shutdown) from
//! [`PollingQueue`](crate::PollingQueue); it only has to make claiming atomic and fence
//! completions by lease.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::control::{CancelOutcome, CancelTarget};
use crate::dead_letter::ErrorChain;
use crate::error::{Error, Result};
use crate::message::{Message, MessageId, Status};
use crate::queue_name::QueueName;
use crate::stats::QueueStats;

/// Identifies one claim of one message: the consumer that made it and the attempt number it
/// set. A store accepts a renewal or completion only while the message is still `processing`
/// under exactly this claim and its lease has not expired, so an owner whose lease lapsed (and
/// who may have been replaced) cannot touch the message any more.
///
/// # Examples
///
/// ```
/// use mq_core::MessageId;
/// use mq_core::backend::Claim;
///
/// let c = Claim::new(MessageId::new("m1")?, 2);
/// assert_eq!(c.attempt, 2);
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Claim {
    /// The message.
    pub id: MessageId,
    /// The attempt number the claim set (`Message::attempts` right after claiming).
    pub attempt: u32,
}

impl Claim {
    /// The claim of `id` at `attempt`.
    pub fn new(id: MessageId, attempt: u32) -> Self {
        Claim { id, attempt }
    }

    /// The claim a freshly claimed `message` carries.
    pub fn of(message: &Message) -> Self {
        Claim::new(message.id.clone(), message.attempts)
    }
}

/// What to write for one claimed message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CompletionAction {
    /// Mark executed.
    Ack,
    /// Back to scheduled, deliverable from `execute_at`.
    Retry {
        /// Next delivery time.
        execute_at: DateTime<Utc>,
        /// The handler's error.
        error: Option<ErrorChain>,
    },
    /// Back to scheduled, deliverable at once, and this delivery not counted (`attempts` goes
    /// back down by one): the handler was stopped by shutdown, not failed by the message, so a
    /// message on its last attempt is not dead-lettered for it.
    Release,
    /// Terminal: mark `status` ([`Status::Failed`] or [`Status::DeadLettered`]).
    Finish {
        /// The terminal status.
        status: Status,
        /// Why.
        error: ErrorChain,
    },
}

/// One completion: a claim and what to write.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Completion {
    /// The claim being completed.
    pub claim: Claim,
    /// What to write.
    pub action: CompletionAction,
}

impl Completion {
    /// A completion of `claim`.
    pub fn new(claim: Claim, action: CompletionAction) -> Self {
        Completion { claim, action }
    }
}

/// What a claim returned.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Claimed {
    /// Messages now held by the claimer, status `processing`, `attempts` raised by one.
    pub messages: Vec<Message>,
    /// Messages found past `expires_at` and marked expired on the way (never delivered).
    pub expired: Vec<Message>,
    /// Rows claimed like `messages` that could not be read back as messages. The runtime
    /// dead-letters each alone, with its raw text and the reason, and finishes it, so one bad
    /// row never holds back the rest of its batch.
    pub undecodable: Vec<Undecodable>,
}

impl Claimed {
    /// A claim result.
    pub fn new(messages: Vec<Message>, expired: Vec<Message>) -> Self {
        Claimed {
            messages,
            expired,
            undecodable: Vec::new(),
        }
    }

    /// Adds rows that were claimed but could not be decoded.
    pub fn with_undecodable(mut self, rows: Vec<Undecodable>) -> Self {
        self.undecodable = rows;
        self
    }
}

/// A claimed row that does not decode into a [`Message`] (a payload nested deeper than the
/// reader allows, text that is not JSON, a value out of range), written by another program or an
/// older version.
///
/// # Examples
///
/// ```
/// use mq_core::MessageId;
/// use mq_core::backend::{Claim, Undecodable};
///
/// let row = Undecodable::new(Claim::new(MessageId::new("m1")?, 1), "welcome", "{\"to\": [[[", "EOF while parsing");
/// assert_eq!(row.claim.attempt, 1);
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Undecodable {
    /// The claim the store made on the row.
    pub claim: Claim,
    /// The stored message type, if readable.
    pub message_type: String,
    /// The stored payload as text, unchanged.
    pub raw: String,
    /// Why it does not decode.
    pub error: String,
}

impl Undecodable {
    /// A row of `message_type` claimed as `claim`, whose `raw` payload failed with `error`.
    pub fn new(
        claim: Claim,
        message_type: impl Into<String>,
        raw: impl Into<String>,
        error: impl fmt::Display,
    ) -> Self {
        Undecodable {
            claim,
            message_type: message_type.into(),
            raw: raw.into(),
            error: error.to_string(),
        }
    }
}

/// The consumer a store hands claims to, and how long each of them lasts: the owner written on
/// every claim it takes and the lease that a claim or a renewal grants. The two always travel
/// together, because a renewal must extend exactly the lease its claim took.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mq_core::backend::Holder;
///
/// let holder = Holder::new("worker-1", Duration::from_secs(30));
/// assert_eq!(holder.owner, "worker-1");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder<'a> {
    /// Identifies the consumer; renewals and completions are accepted only from the owner that
    /// claimed.
    pub owner: &'a str,
    /// How long a claim or a renewal holds a message before another consumer may take it.
    pub lease: Duration,
}

impl<'a> Holder<'a> {
    /// `owner`, holding each claim for `lease`.
    pub fn new(owner: &'a str, lease: Duration) -> Self {
        Holder { owner, lease }
    }
}

/// Durable (or in-process) storage for a polling queue.
///
/// # Contract
///
/// - `claim` is atomic: a message is held by one claim at a time. It takes ready messages
///   (`scheduled` with `execute_at <= now` and not expired) and messages whose lease expired
///   (`processing` with `lease_expires_at <= now`: crash recovery), in `execute_at`, then
///   publication order; sets `processing`, the owner, `lease_expires_at = now + lease`,
///   `processing_started_at = now`, and raises `attempts` by one.
/// - `renew` and `complete` apply only to messages still held under the given [`Claim`] with an
///   unexpired lease; the others are returned as lost.
/// - Scheduled messages past `expires_at` are marked expired, not delivered.
///
/// The conformance suite in `mq_core::testkit` checks all of this against a real store.
#[async_trait]
pub trait QueueStore: Send + Sync + fmt::Debug + 'static {
    /// The backend's name.
    fn backend(&self) -> &'static str;

    /// Prepares storage for `queue` (tables, indexes). Idempotent.
    async fn register(&self, queue: &QueueName) -> Result<()>;

    /// Inserts `messages` (status `scheduled`). Returns one result per message, in order: `Err`
    /// for a message that was not stored (for example [`Error::DuplicateId`]). An `Err` for the
    /// whole call means nothing was stored.
    async fn insert(&self, queue: &QueueName, messages: Vec<Message>) -> Result<Vec<Result<()>>>;

    /// Checks that `message` fits this store (column sizes, characters its database refuses)
    /// before anything is written, so a bad message is refused alone with its reason instead of
    /// failing the whole publish. Called once per message by the publish path; the default
    /// accepts everything.
    fn check(&self, message: &Message) -> Result<()> {
        let _ = message;
        Ok(())
    }

    /// Claims up to `limit` messages for `holder.owner`, each for `holder.lease`.
    async fn claim(&self, queue: &QueueName, holder: Holder<'_>, limit: usize) -> Result<Claimed>;

    /// Extends the leases of `claims` held by `holder.owner` to `now + holder.lease`. Returns
    /// the claims that are no longer held.
    async fn renew(
        &self,
        queue: &QueueName,
        holder: Holder<'_>,
        claims: &[Claim],
    ) -> Result<Vec<Claim>>;

    /// Applies `completions` for messages held by `owner`. Returns the claims that were not
    /// applied because the message is no longer held under them.
    async fn complete(
        &self,
        queue: &QueueName,
        owner: &str,
        completions: Vec<Completion>,
    ) -> Result<Vec<Claim>>;

    /// Of `claims`, whose completion [`complete`](Self::complete) refused although the handler
    /// marked them completed ([`HandlerContext::mark_completed`](crate::HandlerContext::mark_completed)),
    /// the ones their own delivery did complete, by `owner` in the handler's transaction. A
    /// handler can mark a message, roll its transaction back and lose the lease afterwards;
    /// that delivery completed nothing and must count as a lost lease, not as acknowledged.
    ///
    /// Only stores that let a handler complete a message in its own transaction see marks.
    /// The default trusts every mark.
    async fn completed_by_delivery(
        &self,
        queue: &QueueName,
        owner: &str,
        claims: &[Claim],
    ) -> Result<Vec<Claim>> {
        let _ = (queue, owner);
        Ok(claims.to_vec())
    }

    /// The numbers of `queue`, or of every queue the store holds when `queue` is `None`, in
    /// queue-name order. Read-only. The default says the store cannot count.
    async fn queue_stats(&self, queue: Option<&QueueName>) -> Result<Vec<QueueStats>> {
        let _ = queue;
        Err(Error::Unsupported {
            backend: self.backend(),
            operation: "queue statistics",
        })
    }

    /// The depth of `queue` (or of every queue when `None`): only its waiting and running
    /// messages are counted ([`Status::Scheduled`] and [`Status::Processing`]), with the oldest
    /// ready message's age and the expired leases. This is what a gauge reads on an interval, so
    /// a store should answer it without reading its finished messages, whose number grows
    /// without bound when they are kept. The default reads [`queue_stats`](Self::queue_stats)
    /// and drops the finished counts.
    async fn queue_depth(&self, queue: Option<&QueueName>) -> Result<Vec<QueueStats>> {
        let mut stats = self.queue_stats(queue).await?;
        for s in &mut stats {
            s.counts.retain(|status, _| !status.is_terminal());
        }
        Ok(stats)
    }

    /// Cancels the message `target` names (see [`MessageQueue::cancel`](crate::MessageQueue::cancel)):
    /// a scheduled one is marked [`Status::Cancelled`]; a processing one too, which makes its
    /// holder's renewals and completions fail. Releases its unique key.
    async fn cancel(&self, queue: &QueueName, target: CancelTarget) -> Result<CancelOutcome> {
        let _ = (queue, target);
        Err(Error::Unsupported {
            backend: self.backend(),
            operation: "cancelling a message",
        })
    }

    /// Pauses (`true`) or resumes `queue` for every process using this store: while paused,
    /// [`QueueStore::claim`] returns nothing.
    async fn set_paused(&self, queue: &QueueName, paused: bool) -> Result<()> {
        let _ = (queue, paused);
        Err(Error::Unsupported {
            backend: self.backend(),
            operation: "pausing a queue",
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

    /// Wakes this process's consumers of `queue` that wait in
    /// [`QueueStore::wait_for_work`] (after a resume, say). The default does nothing.
    fn wake(&self, queue: &QueueName) {
        let _ = queue;
    }

    /// Releases what the store holds open (listener tasks, connection pools) once the queue
    /// has shut down and no handler runs any more; called once by
    /// [`PollingQueue`](crate::backend::PollingQueue)'s `shutdown`. The default does nothing.
    async fn close(&self) {}

    /// Waits until new messages may be ready in `queue`, or `timeout`. The default sleeps;
    /// backends with notifications (in-process signals, LISTEN/NOTIFY, change streams) wake early.
    async fn wait_for_work(&self, queue: &QueueName, timeout: Duration) {
        let _ = queue;
        tokio::time::sleep(timeout).await;
    }
}

/// Builds the [`Error::DuplicateId`] a store reports for a message already stored.
///
/// # Examples
///
/// ```
/// use mq_core::{backend::duplicate_id, MessageId, QueueName};
///
/// let e = duplicate_id(&QueueName::new("q")?, &MessageId::new("m1")?);
/// assert_eq!(e.to_string(), "message id m1 already exists in queue q");
/// # Ok::<(), mq_core::Error>(())
/// ```
pub fn duplicate_id(queue: &QueueName, id: &MessageId) -> Error {
    Error::DuplicateId {
        id: id.clone(),
        queue: queue.clone(),
    }
}
