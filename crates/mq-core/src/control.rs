//! Queue controls: cancelling a message, pausing and resuming a queue.

use crate::message::{MessageId, Status};

/// Which message [`MessageQueue::cancel`](crate::MessageQueue::cancel) applies to.
///
/// # Examples
///
/// ```
/// use mq_core::{CancelTarget, MessageId};
///
/// let by_id = CancelTarget::Id(MessageId::new("m1")?);
/// let by_key = CancelTarget::UniqueKey("invoice-42".into());
/// # let _ = (by_id, by_key);
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelTarget {
    /// The message with this id.
    Id(MessageId),
    /// The message that holds this unique key.
    UniqueKey(String),
}

/// What [`MessageQueue::cancel`](crate::MessageQueue::cancel) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// The message was waiting (or scheduled for later) and will never be delivered.
    Cancelled(MessageId),
    /// The message was running: it is marked cancelled, its handler's completion will be
    /// refused and its cancellation token is cancelled at the consumer's next lease renewal.
    CancelledRunning(MessageId),
    /// The message had already finished with this status; nothing changed.
    AlreadyFinished(MessageId, Status),
    /// No such message (or no message holds the key).
    NotFound,
}
