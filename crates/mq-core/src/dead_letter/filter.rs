//! [`DeadLetterFilter`]: which entries a list, count, purge or replay applies to.

use crate::dead_letter::entry::{DeadLetterEntry, EntryId, ReplayState, to_ms};
use crate::message::MessageId;
use crate::queue_name::QueueName;
use chrono::{DateTime, Utc};

/// Selects dead-letter entries. Every set criterion must hold (AND); an empty filter selects
/// everything.
///
/// - `queue`, `message_type`: exact match;
/// - `failed_after` (inclusive), `failed_before` (exclusive): the last failure time;
/// - `ids`: entry ids, `message_ids`: original message ids (either list empty = no constraint);
/// - `error_contains`: a substring of the error chain text, ASCII case-insensitive, `%` and `_`
///   taken literally;
/// - `replay_state`: only entries in one replay state.
///
/// `after` and `limit` page through [`DeadLetterStore::list`](crate::DeadLetterStore::list)
/// (entries come in id order, which is the order of first failure); count and purge ignore them.
///
/// # Examples
///
/// ```
/// use mq_core::QueueName;
/// use mq_core::{DeadLetterFilter, ReplayState};
///
/// let filter = DeadLetterFilter::default()
///     .queue(QueueName::new("emails")?)
///     .message_type("welcome")
///     .error_contains("timeout")
///     .failed_after(chrono::Utc::now() - chrono::Duration::hours(1))
///     .replay_state(ReplayState::None)
///     .limit(100);
/// assert_eq!(filter.get_limit(), Some(100));
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadLetterFilter {
    pub(crate) queue: Option<QueueName>,
    pub(crate) message_type: Option<String>,
    pub(crate) failed_after: Option<DateTime<Utc>>,
    pub(crate) failed_before: Option<DateTime<Utc>>,
    pub(crate) ids: Vec<EntryId>,
    pub(crate) message_ids: Vec<MessageId>,
    pub(crate) error_contains: Option<String>,
    pub(crate) replay_state: Option<ReplayState>,
    pub(crate) after: Option<EntryId>,
    pub(crate) limit: Option<usize>,
}

impl DeadLetterFilter {
    crate::__option_setters! {
        /// Only entries of messages that failed in `queue`.
        queue(queue: QueueName) Some(queue);
        /// Only messages of this type.
        message_type(message_type: impl Into<String>) Some(message_type.into());
        /// Only entries last failed at or after `t`.
        failed_after(t: DateTime<Utc>) Some(t);
        /// Only entries last failed before `t`.
        failed_before(t: DateTime<Utc>) Some(t);
        /// Only these entries.
        ids(ids: impl IntoIterator<Item = EntryId>) ids.into_iter().collect();
        /// Only entries of messages with these original ids.
        message_ids(ids: impl IntoIterator<Item = MessageId>) ids.into_iter().collect();
        /// Only entries whose error text contains `text` (ASCII case-insensitive).
        error_contains(text: impl Into<String>) Some(text.into());
        /// Only entries in replay state `state`.
        replay_state(state: ReplayState) Some(state);
        /// Only entries with an id after `id` (the cursor of the next page).
        after(id: EntryId) Some(id);
    }
    /// Drops the paging cursor, so the next list starts at the first matching entry.
    pub fn first_page(mut self) -> Self {
        self.after = None;
        self
    }
    /// At most `n` entries per list call.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// The queue criterion.
    pub fn get_queue(&self) -> Option<&QueueName> {
        self.queue.as_ref()
    }
    /// The page size.
    pub fn get_limit(&self) -> Option<usize> {
        self.limit
    }
    /// The paging cursor: only entries with an id after this one.
    pub fn get_after(&self) -> Option<&EntryId> {
        self.after.as_ref()
    }
    /// The message-type criterion.
    pub fn get_message_type(&self) -> Option<&str> {
        self.message_type.as_deref()
    }
    /// The lower bound (inclusive) of the last failure time.
    pub fn get_failed_after(&self) -> Option<DateTime<Utc>> {
        self.failed_after
    }
    /// The upper bound (exclusive) of the last failure time.
    pub fn get_failed_before(&self) -> Option<DateTime<Utc>> {
        self.failed_before
    }
    /// The entry ids criterion (empty: any).
    pub fn get_ids(&self) -> &[EntryId] {
        &self.ids
    }
    /// The original message ids criterion (empty: any).
    pub fn get_message_ids(&self) -> &[MessageId] {
        &self.message_ids
    }
    /// The error-text criterion.
    pub fn get_error_contains(&self) -> Option<&str> {
        self.error_contains.as_deref()
    }
    /// The replay-state criterion.
    pub fn get_replay_state(&self) -> Option<ReplayState> {
        self.replay_state
    }

    /// True when `entry` meets every criterion (paging aside). Stores that cannot query use it;
    /// the others must agree with it (the conformance suite checks).
    ///
    /// # Examples
    ///
    /// ```
    /// # use mq_core::{DeadLetter, DeadLetterOrigin, ErrorChain, Message, MessageId, QueueName};
    /// use mq_core::{DeadLetterEntry, DeadLetterFilter};
    /// # let message = Message::new(MessageId::new("m1")?, QueueName::new("emails")?, "welcome",
    /// #     serde_json::json!({}), chrono::Utc::now());
    /// # let letter = DeadLetter::new(message, DeadLetterOrigin::backend("sql"),
    /// #     ErrorChain::msg("SMTP Timeout"), true, "w");
    /// let entry = DeadLetterEntry::from_letter(letter);
    /// assert!(DeadLetterFilter::default().error_contains("smtp timeout").matches(&entry));
    /// assert!(!DeadLetterFilter::default().message_type("other").matches(&entry));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn matches(&self, entry: &DeadLetterEntry) -> bool {
        self.queue.as_ref().is_none_or(|q| entry.queue() == q)
            && self
                .message_type
                .as_ref()
                .is_none_or(|t| &entry.message.message_type == t)
            && self
                .failed_after
                .is_none_or(|t| to_ms(entry.last_failed_at) >= to_ms(t))
            && self
                .failed_before
                .is_none_or(|t| to_ms(entry.last_failed_at) < to_ms(t))
            && (self.ids.is_empty() || self.ids.contains(&entry.id))
            && (self.message_ids.is_empty() || self.message_ids.contains(&entry.message.id))
            && self.error_contains.as_ref().is_none_or(|needle| {
                entry
                    .error
                    .to_string()
                    .to_ascii_lowercase()
                    .contains(&needle.to_ascii_lowercase())
            })
            && self.replay_state.is_none_or(|s| entry.replay_state() == s)
    }
}
