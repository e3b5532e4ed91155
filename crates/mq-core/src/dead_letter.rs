//! Dead letters: the hook terminally failed messages go to, with their error chain, and the
//! store that keeps, lists, replays and purges them.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::BoxError;
use crate::message::Message;

mod entry;
mod filter;
mod original;
mod store;

pub use entry::{DeadLetterEntry, DeadLetterFields, EntryId, ReplayMark, ReplayState};
pub use filter::DeadLetterFilter;
pub use store::DeadLetterStore;

/// An error and its causes, outermost first, as plain text that can be stored and shown.
///
/// # Examples
///
/// ```
/// use mq_core::ErrorChain;
///
/// let io = std::io::Error::other("disk full");
/// let chain = ErrorChain::from_error(&io);
/// assert_eq!(chain.to_string(), "disk full");
/// assert_eq!(ErrorChain::msg("timed out").causes(), ["timed out"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorChain(Vec<String>);

impl ErrorChain {
    /// Walks `err` and its sources.
    pub fn from_error(err: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = vec![err.to_string()];
        let mut cur = err.source();
        while let Some(e) = cur {
            chain.push(e.to_string());
            cur = e.source();
        }
        ErrorChain(chain)
    }

    /// A chain of one message.
    pub fn msg(message: impl fmt::Display) -> Self {
        ErrorChain(vec![message.to_string()])
    }

    /// The messages, outermost first.
    pub fn causes(&self) -> &[String] {
        &self.0
    }
}

/// The causes joined by `: `, outermost first. A cause whose text an outer message already
/// carries is left out: many drivers repeat their source's message in their own, which would
/// otherwise print twice.
impl fmt::Display for ErrorChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        for cause in &self.0 {
            if text.contains(cause.as_str()) {
                continue;
            }
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(cause);
        }
        f.write_str(&text)
    }
}

impl From<BoxError> for ErrorChain {
    fn from(e: BoxError) -> Self {
        ErrorChain::from_error(&*e)
    }
}

/// Where a dead letter came from.
///
/// # Examples
///
/// ```
/// use mq_core::DeadLetterOrigin;
///
/// let origin = DeadLetterOrigin::default();
/// assert!(origin.shard_id.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetterOrigin {
    /// The backend (`"memory"`, `"sql"`, `"kinesis"`, ...).
    pub backend: String,
    /// Kinesis shard, when the message came from one.
    pub shard_id: Option<String>,
    /// Kinesis sequence number, when the message came from one.
    pub sequence_number: Option<String>,
}

impl DeadLetterOrigin {
    /// The origin of a message from a queue of `backend`.
    pub fn backend(backend: impl Into<String>) -> Self {
        DeadLetterOrigin {
            backend: backend.into(),
            ..DeadLetterOrigin::default()
        }
    }

    /// The origin of a Kinesis record.
    pub fn shard(
        backend: impl Into<String>,
        shard_id: impl Into<String>,
        sequence_number: impl Into<String>,
    ) -> Self {
        DeadLetterOrigin {
            backend: backend.into(),
            shard_id: Some(shard_id.into()),
            sequence_number: Some(sequence_number.into()),
        }
    }
}

/// A message that will not be delivered again, handed to the dead-letter hook.
///
/// The message is kept untouched (its `attempts` and `status` as they were when it failed).
/// A backend that reads records of bytes (Kinesis) also keeps the bytes the message was read
/// from, in [`original_bytes`](DeadLetter::original_bytes), so that a replay can write the
/// record back exactly as it was.
///
/// # Examples
///
/// ```
/// use mq_core::{DeadLetter, DeadLetterOrigin, ErrorChain, Message, MessageId, QueueName};
///
/// let record = br#"{"_id": {"$oid": "65f1c0ffee"}, "type": "welcome", "payload": {}}"#;
/// let message = Message::new(MessageId::new("65f1c0ffee")?, QueueName::new("emails")?,
///     "welcome", serde_json::json!({}), chrono::Utc::now());
/// let letter = DeadLetter::new(
///     message,
///     DeadLetterOrigin::shard("kinesis", "shardId-000000000000", "4959"),
///     ErrorChain::msg("smtp refused"),
///     true,
///     "worker-1",
/// )
/// .original_bytes(record.to_vec());
/// assert_eq!(letter.original_bytes.as_deref(), Some(&record[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message as delivered.
    pub message: Message,
    /// Where it came from.
    pub origin: DeadLetterOrigin,
    /// Why it failed (the last error).
    pub error: ErrorChain,
    /// True when it ran out of attempts, false when the handler failed it outright.
    pub exhausted: bool,
    /// When it failed for good.
    pub failed_at: DateTime<Utc>,
    /// The consumer that gave up.
    pub consumer_id: String,
    /// The bytes the message was read from, exactly as they were: the Kinesis record's data
    /// (for an aggregated record, the user record's own), whether it decoded or not. `None` for
    /// backends that store messages rather than bytes, and for letters written before stores
    /// kept them. In JSON it is standard base64 (left out when `None`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "original::base64_bytes"
    )]
    pub original_bytes: Option<Vec<u8>>,
}

impl DeadLetter {
    /// A dead letter for `message`.
    pub fn new(
        message: Message,
        origin: DeadLetterOrigin,
        error: ErrorChain,
        exhausted: bool,
        consumer_id: impl Into<String>,
    ) -> Self {
        DeadLetter {
            message,
            origin,
            error,
            exhausted,
            failed_at: Utc::now(),
            consumer_id: consumer_id.into(),
            original_bytes: None,
        }
    }

    /// Keeps `bytes`, the record the message was read from, as
    /// [`original_bytes`](DeadLetter::original_bytes).
    pub fn original_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.original_bytes = Some(bytes.into());
        self
    }
}

/// Receives messages that failed for good. Every [`DeadLetterStore`] is one; every backend
/// calls it for exhausted messages, explicit dead-letter outcomes and (Kinesis) poison pills.
///
/// When the hook fails, durable backends keep the message in their own store with status
/// `failed`, so nothing is lost; the failure is reported as an error to the lifecycle observers.
///
/// # Examples
///
/// ```
/// use std::sync::Mutex;
/// use mq_core::{async_trait, BoxError, DeadLetter, DeadLetterSink};
///
/// #[derive(Debug, Default)]
/// struct Collect(Mutex<Vec<DeadLetter>>);
///
/// #[async_trait]
/// impl DeadLetterSink for Collect {
///     async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), BoxError> {
///         self.0.lock().unwrap().extend(letters);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait DeadLetterSink: Send + Sync + fmt::Debug + 'static {
    /// Stores `letters`; all or nothing.
    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), BoxError>;
}

#[cfg(test)]
mod tests {
    use super::ErrorChain;

    #[test]
    fn a_cause_its_parent_repeats_is_shown_once() {
        let chain = ErrorChain(vec![
            "reading the table".into(),
            "error returned from database: relation \"x\" does not exist".into(),
            "relation \"x\" does not exist".into(),
        ]);
        assert_eq!(
            chain.to_string(),
            "reading the table: error returned from database: relation \"x\" does not exist"
        );
        assert_eq!(
            chain.causes().len(),
            3,
            "the stored chain keeps every cause"
        );
    }
}
