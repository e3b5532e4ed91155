//! [`QueueStats`]: how many messages a queue holds in each status, and how late it runs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::message::Status;
use crate::queue_name::QueueName;

/// One queue's numbers, as a store reports them: messages per status, the age of the oldest
/// message that is due and not yet claimed, and the claims whose lease expired (a crashed or
/// stuck consumer).
///
/// # Examples
///
/// ```
/// use mq_core::{QueueName, QueueStats, Status};
///
/// let mut stats = QueueStats::new(QueueName::new("emails")?);
/// stats.counts.insert(Status::Scheduled, 3);
/// stats.counts.insert(Status::Executed, 7);
/// assert_eq!(stats.count(Status::Scheduled), 3);
/// assert_eq!(stats.count(Status::Failed), 0);
/// assert_eq!(stats.total(), 10);
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// The (resolved) queue.
    pub queue: QueueName,
    /// Messages per status; a status with none may be absent.
    pub counts: BTreeMap<Status, u64>,
    /// How long the oldest due, unclaimed message has waited past its `execute_at`.
    pub oldest_ready_age: Option<Duration>,
    /// Messages in processing whose lease has expired.
    pub expired_leases: u64,
}

impl QueueStats {
    /// Empty numbers for `queue`.
    pub fn new(queue: QueueName) -> Self {
        QueueStats {
            queue,
            counts: BTreeMap::new(),
            oldest_ready_age: None,
            expired_leases: 0,
        }
    }

    /// Messages in `status`.
    pub fn count(&self, status: Status) -> u64 {
        self.counts.get(&status).copied().unwrap_or(0)
    }

    /// Messages in any status.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}
