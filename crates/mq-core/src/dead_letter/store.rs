//! The [`DeadLetterStore`] trait.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::dead_letter::entry::{DeadLetterEntry, EntryId, ReplayMark};
use crate::dead_letter::filter::DeadLetterFilter;
use crate::dead_letter::{DeadLetter, DeadLetterSink};
use crate::error::Result;
use crate::message::MessageId;

/// Where dead letters are kept, listed, replayed and purged.
///
/// Every store is also a [`DeadLetterSink`], so it plugs into any backend with
/// [`CommonOptions::dead_letters`](crate::CommonOptions::dead_letters): exhausted messages,
/// explicit dead-letter outcomes and Kinesis poison pills land here.
///
/// A message is stored once per (queue, message id): dead-lettering it again (a redelivered
/// poison pill, a retried hook) adds a failure to the same entry instead of a second entry.
///
/// Replay marks are written in two phases so that a replay is idempotent
/// (the replayer of `mq-dlq` relies on it): [`begin_replay`](DeadLetterStore::begin_replay)
/// claims an entry with a compare-and-set on its replay generation and records the id the
/// message will be published under; [`finish_replay`](DeadLetterStore::finish_replay) confirms
/// the publish.
///
/// # Examples
///
/// ```
/// use mq_core::{DeadLetterFilter, DeadLetterStore, QueueName};
///
/// /// Dead letters of `queue` not replayed yet.
/// async fn depth(store: &dyn DeadLetterStore, queue: QueueName) -> mq_core::Result<u64> {
///     store
///         .count(&DeadLetterFilter::default().queue(queue).replay_state(mq_core::ReplayState::None))
///         .await
/// }
/// ```
#[async_trait]
pub trait DeadLetterStore: DeadLetterSink {
    /// Creates the table, collection or indexes the store needs; idempotent. Stores that need
    /// nothing do nothing.
    async fn migrate(&self) -> Result<()> {
        Ok(())
    }

    /// Stores `letters`, all or nothing; a letter whose (queue, message id) is already stored
    /// adds a failure to that entry.
    async fn insert(&self, letters: Vec<DeadLetter>) -> Result<()>;

    /// Entries matching `filter`, in id order, after `filter.after`, at most `filter.limit`.
    async fn list(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterEntry>>;

    /// One entry.
    async fn get(&self, id: &EntryId) -> Result<Option<DeadLetterEntry>>;

    /// How many entries match `filter` (paging ignored): the dead-letter depth.
    async fn count(&self, filter: &DeadLetterFilter) -> Result<u64>;

    /// Phase one of a replay: sets `mark` (pending) on entry `id` if its replay generation is
    /// still `expected_generation` (0 = never replayed) and no replay is pending on it. Returns
    /// false when the entry is gone or another replay got there first.
    async fn begin_replay(
        &self,
        id: &EntryId,
        expected_generation: u32,
        mark: &ReplayMark,
    ) -> Result<bool>;

    /// Phase two: marks the pending replay published as `message_id` done at `at`. Returns false
    /// when the entry is gone or carries another replay.
    async fn finish_replay(
        &self,
        id: &EntryId,
        message_id: &MessageId,
        at: DateTime<Utc>,
    ) -> Result<bool>;

    /// Deletes the entries matching `filter` (paging ignored); returns how many.
    async fn purge(&self, filter: &DeadLetterFilter) -> Result<u64>;
}
