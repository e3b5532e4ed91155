//! A stored dead letter: [`DeadLetterEntry`], its id and its replay state.

use std::fmt;
use std::str::FromStr;

use crate::dead_letter::{DeadLetter, DeadLetterOrigin, ErrorChain};
use crate::error::{Error, Result};
use crate::message::{Message, MessageId};
use crate::queue_name::QueueName;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The id of a dead-letter entry: a ULID given when the message is first dead-lettered, so ids
/// sort by the time of the first failure.
///
/// # Examples
///
/// ```
/// use mq_core::EntryId;
///
/// let id = EntryId::generate();
/// let parsed: EntryId = id.as_str().parse()?;
/// assert_eq!(parsed, id);
/// assert!("nope".parse::<EntryId>().is_err());
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EntryId(String);

impl EntryId {
    /// A new id, later than every id generated before it in this process.
    pub fn generate() -> Self {
        EntryId(ulid::Ulid::new().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EntryId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match ulid::Ulid::from_string(s) {
            Ok(u) => Ok(EntryId(u.to_string())),
            Err(_) => Err(Error::InvalidEntryId {
                id: s.to_owned(),
                reason: "expected a 26-character ULID such as 01JDQ8Z6N6X1N6N8C3V1T5K2QW",
            }),
        }
    }
}

impl TryFrom<String> for EntryId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<EntryId> for String {
    fn from(id: EntryId) -> Self {
        id.0
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a dead-letter entry is in its replay.
///
/// # Examples
///
/// ```
/// use mq_core::ReplayState;
///
/// assert_eq!(ReplayState::Pending.as_str(), "pending");
/// assert_eq!("done".parse::<ReplayState>()?, ReplayState::Done);
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReplayState {
    /// Never replayed.
    None,
    /// A replay claimed the entry and may or may not have published it (phase one of two).
    Pending,
    /// Published by a replay and marked so (phase two).
    Done,
}

impl ReplayState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayState::None => "none",
            ReplayState::Pending => "pending",
            ReplayState::Done => "done",
        }
    }
}

impl FromStr for ReplayState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(ReplayState::None),
            "pending" => Ok(ReplayState::Pending),
            "done" => Ok(ReplayState::Done),
            other => Err(Error::invalid_option(
                "replay_state",
                format!("unknown replay state {other:?}; expected none, pending or done"),
            )),
        }
    }
}

impl fmt::Display for ReplayState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The replay mark of an entry: which replay took it, under which id it is published, where.
///
/// The published message id is [`ReplayMark::message_id`], derived from the entry id and the
/// generation only (`<entry id>-r<generation>`), so a replay that resumes a pending entry
/// publishes it under the same id again and the queue's duplicate-id check refuses the copy.
///
/// # Examples
///
/// ```
/// use mq_core::QueueName;
/// use mq_core::{EntryId, ReplayMark};
///
/// let entry = EntryId::generate();
/// let mark = ReplayMark::new(&entry, 1, QueueName::new("emails")?, chrono::Utc::now());
/// assert_eq!(mark.message_id.as_str(), format!("{entry}-r1"));
/// assert!(mark.replayed_at.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReplayMark {
    /// 1 for the first replay of the entry, 2 for a deliberate second one, ...
    pub generation: u32,
    /// The id the replayed message is published under (also the replay id).
    pub message_id: MessageId,
    /// The queue it is published to.
    pub target: QueueName,
    /// When the replay claimed the entry.
    pub started_at: DateTime<Utc>,
    /// When the publish was confirmed; `None` while pending.
    pub replayed_at: Option<DateTime<Utc>>,
}

impl ReplayMark {
    /// A pending mark of generation `generation` for `entry`.
    pub fn new(entry: &EntryId, generation: u32, target: QueueName, now: DateTime<Utc>) -> Self {
        ReplayMark {
            generation,
            message_id: replay_message_id(entry, generation),
            target,
            started_at: truncate_ms(now),
            replayed_at: None,
        }
    }
}

/// `<entry id>-r<generation>`: at most 26 + 12 bytes, always a valid message id.
pub(crate) fn replay_message_id(entry: &EntryId, generation: u32) -> MessageId {
    // A ULID plus a number is printable and short, so this cannot fail; fall back to the bare
    // entry id rather than panic if the rules ever change.
    MessageId::new(format!("{entry}-r{generation}"))
        .or_else(|_| MessageId::new(entry.as_str()))
        .unwrap_or_else(|_| unreachable_id())
}

#[cold]
fn unreachable_id() -> MessageId {
    // Both candidates are ASCII alphanumerics plus '-', well under the length limit.
    MessageId::try_from("replay").unwrap_or_else(|e| panic!("message id rules changed: {e}"))
}

/// A dead letter as stored: the message untouched, where it came from, why it failed, how often,
/// who gave up, and its replay state.
///
/// # Examples
///
/// ```
/// use mq_core::{DeadLetter, DeadLetterOrigin, ErrorChain, Message, MessageId, QueueName};
/// use mq_core::{DeadLetterEntry, ReplayState};
///
/// let message = Message::new(
///     MessageId::new("m1")?, QueueName::new("emails")?, "welcome",
///     serde_json::json!({}), chrono::Utc::now(),
/// );
/// let letter = DeadLetter::new(message, DeadLetterOrigin::backend("sql"),
///     ErrorChain::msg("smtp refused"), true, "worker-1");
/// let entry = DeadLetterEntry::from_letter(letter);
/// assert_eq!(entry.queue().as_str(), "emails");
/// assert_eq!(entry.failures, 1);
/// assert_eq!(entry.replay_state(), ReplayState::None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetterEntry {
    /// The entry id.
    pub id: EntryId,
    /// The message as it was when it failed (its queue, attempts and status included).
    pub message: Message,
    /// The backend, and for Kinesis the shard and sequence number.
    pub origin: DeadLetterOrigin,
    /// The last error, outermost first.
    pub error: ErrorChain,
    /// Deliveries started before it was given up (the message's `attempts`).
    pub attempts: u32,
    /// True when it ran out of attempts, false when the handler failed it outright.
    pub exhausted: bool,
    /// How many times this message (same queue and id) reached the dead-letter store.
    pub failures: u32,
    /// When it was first dead-lettered.
    pub first_failed_at: DateTime<Utc>,
    /// When it was last dead-lettered.
    pub last_failed_at: DateTime<Utc>,
    /// The consumer that gave up (the last one).
    pub consumer_id: String,
    /// The replay mark, once a replay took the entry.
    pub replay: Option<ReplayMark>,
    /// The bytes the message was read from, exactly as they were (see
    /// [`DeadLetter::original_bytes`]); `None` when the backend stores messages rather than
    /// bytes, and for entries stored before stores kept them. A repeated dead-lettering keeps the
    /// first bytes, as it keeps the first message. In JSON it is standard base64 (left out when
    /// `None`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::dead_letter::original::base64_bytes"
    )]
    pub original_bytes: Option<Vec<u8>>,
}

impl DeadLetterEntry {
    /// A fresh entry (new id, one failure, not replayed) for `letter`.
    pub fn from_letter(letter: DeadLetter) -> Self {
        DeadLetterEntry {
            id: EntryId::generate(),
            attempts: letter.message.attempts,
            message: letter.message,
            origin: letter.origin,
            error: letter.error,
            exhausted: letter.exhausted,
            failures: 1,
            first_failed_at: truncate_ms(letter.failed_at),
            last_failed_at: truncate_ms(letter.failed_at),
            consumer_id: letter.consumer_id,
            replay: None,
            original_bytes: letter.original_bytes,
        }
    }

    /// The queue the message failed in.
    pub fn queue(&self) -> &QueueName {
        &self.message.queue
    }

    /// None, pending or done.
    pub fn replay_state(&self) -> ReplayState {
        match &self.replay {
            None => ReplayState::None,
            Some(m) if m.replayed_at.is_some() => ReplayState::Done,
            Some(_) => ReplayState::Pending,
        }
    }

    /// Folds a repeated dead-lettering of the same message into this entry: one more failure,
    /// the newer error, time, attempts and consumer; the stored message and the replay state are
    /// kept (and so are the original bytes).
    ///
    /// Stores that keep entries as whole values (in memory, say) call it; the others do the same
    /// in their update statement.
    pub fn absorb(&mut self, letter: DeadLetter) {
        self.failures = self.failures.saturating_add(1);
        self.error = letter.error;
        self.exhausted = letter.exhausted;
        self.attempts = self.attempts.max(letter.message.attempts);
        let at = truncate_ms(letter.failed_at);
        self.last_failed_at = self.last_failed_at.max(at);
        self.first_failed_at = self.first_failed_at.min(at);
        self.consumer_id = letter.consumer_id;
    }
}

/// Milliseconds since the epoch, the unit every store keeps times in.
pub(crate) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

impl DeadLetterEntry {
    /// A time stored as milliseconds since the epoch, read back for entry `id`: every store keeps
    /// entry times in milliseconds.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptDeadLetter`] when `ms` is out of range.
    ///
    /// # Examples
    ///
    /// ```
    /// use mq_core::DeadLetterEntry;
    ///
    /// let t = DeadLetterEntry::time_from_millis("e1", 1_700_000_000_000)?;
    /// assert_eq!(t.timestamp_millis(), 1_700_000_000_000);
    /// assert!(DeadLetterEntry::time_from_millis("e1", i64::MAX).is_err());
    /// # Ok::<(), mq_core::Error>(())
    /// ```
    pub fn time_from_millis(id: &str, ms: i64) -> Result<DateTime<Utc>> {
        DateTime::from_timestamp_millis(ms)
            .ok_or_else(|| Error::corrupt_dead_letter(id, format!("time {ms} ms is out of range")))
    }
}

/// Every stored time is truncated to the millisecond, so entries read back equal what was kept.
pub(crate) fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// Read access to an entry as stores keep it: one flat record whose fields are named as in
/// [`DeadLetterEntry::from_fields`]. SQL rows and MongoDB documents implement it, so every
/// store reads entries back the same way.
pub trait DeadLetterFields {
    /// The text field `name`, `None` when absent or NULL.
    ///
    /// # Errors
    ///
    /// When the field exists with another type, or the record cannot be read.
    fn text(&self, name: &str) -> Result<Option<String>>;

    /// The integer field `name` (booleans as 0 or 1), `None` when absent or NULL.
    ///
    /// # Errors
    ///
    /// When the field exists with another type, or the record cannot be read.
    fn int(&self, name: &str) -> Result<Option<i64>>;

    /// The binary field `name`, `None` when absent or NULL.
    ///
    /// The provided method reads the text field `name` as standard base64, for records that
    /// can only hold text; stores with a binary type (a `BYTEA` or `BLOB` column, BSON binary)
    /// read it directly.
    ///
    /// # Errors
    ///
    /// When the field exists with another type (or as text that is not base64), or the record
    /// cannot be read.
    fn bytes(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(text) = self.text(name)? else {
            return Ok(None);
        };
        match crate::dead_letter::original::decode(&text) {
            Some(bytes) => Ok(Some(bytes)),
            None => {
                let id = self.text("id")?.unwrap_or_else(|| "?".to_owned());
                Err(Error::corrupt_dead_letter(
                    id,
                    format!("field {name} is not standard base64"),
                ))
            }
        }
    }
}

impl DeadLetterEntry {
    /// Reads an entry back from a store's record: `id` (the entry id), `message` (the message
    /// as JSON), `error` (the error chain as a JSON array of strings), `backend`, `shard_id`,
    /// `sequence_number`, `attempts`, `exhausted` (0 or 1), `failures`, `first_failed_at` and
    /// `last_failed_at` (milliseconds), `consumer_id`, `replay_state` (`none`, `pending`,
    /// `done`), and while a replay exists `replay_generation`, `replay_message_id`,
    /// `replay_target`, `replay_started_at` and `replayed_at`; and `original_bytes` (binary,
    /// see [`DeadLetterFields::bytes`]) when the entry keeps them.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptDeadLetter`] naming the entry and the field when the record is not one
    /// this version wrote; the record's own error otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use mq_core::{DeadLetterEntry, DeadLetterFields, ReplayState};
    ///
    /// struct Row(HashMap<&'static str, String>);
    /// impl DeadLetterFields for Row {
    ///     fn text(&self, name: &str) -> mq_core::Result<Option<String>> {
    ///         Ok(self.0.get(name).cloned())
    ///     }
    ///     fn int(&self, name: &str) -> mq_core::Result<Option<i64>> {
    ///         Ok(self.0.get(name).and_then(|v| v.parse().ok()))
    ///     }
    /// }
    ///
    /// let message = r#"{"id":"m1","type":"welcome","payload":{},"queue_id":"emails","status":"failed",
    ///     "execute_at":"2026-01-01T00:00:00Z","attempts":3,"created_at":"2026-01-01T00:00:00Z",
    ///     "updated_at":"2026-01-01T00:00:00Z"}"#;
    /// let row = Row(HashMap::from([
    ///     ("id", "01JDQ8Z6N6X1N6N8C3V1T5K2QW".to_owned()), ("message", message.to_owned()),
    ///     ("error", r#"["smtp refused"]"#.to_owned()), ("backend", "sql".to_owned()),
    ///     ("attempts", "3".to_owned()), ("exhausted", "1".to_owned()), ("failures", "1".to_owned()),
    ///     ("first_failed_at", "1767225600000".to_owned()), ("last_failed_at", "1767225600000".to_owned()),
    ///     ("consumer_id", "w1".to_owned()), ("replay_state", "none".to_owned()),
    /// ]));
    /// let entry = DeadLetterEntry::from_fields(&row)?;
    /// assert_eq!(entry.message.id.as_str(), "m1");
    /// assert_eq!(entry.replay_state(), ReplayState::None);
    /// # Ok::<(), mq_core::Error>(())
    /// ```
    pub fn from_fields(fields: &impl DeadLetterFields) -> Result<Self> {
        let id_text = fields.text("id")?.unwrap_or_else(|| "?".to_owned());
        let corrupt = |what: String| Error::corrupt_dead_letter(&id_text, what);
        let text = |name: &str| {
            fields
                .text(name)?
                .ok_or_else(|| corrupt(format!("field {name} is missing")))
        };
        let int = |name: &str| {
            fields
                .int(name)?
                .ok_or_else(|| corrupt(format!("field {name} is missing")))
        };
        let count = |name: &str| -> Result<u32> {
            let v = int(name)?;
            u32::try_from(v).map_err(|_| corrupt(format!("{name} = {v}")))
        };
        let time = |ms: i64| DeadLetterEntry::time_from_millis(&id_text, ms);
        let id: EntryId = id_text.parse().map_err(|e| corrupt(format!("id: {e}")))?;
        let message: Message = serde_json::from_str(&text("message")?)
            .map_err(|e| corrupt(format!("message: {e}")))?;
        let error: ErrorChain =
            serde_json::from_str(&text("error")?).map_err(|e| corrupt(format!("error: {e}")))?;
        let mut origin = DeadLetterOrigin::backend(text("backend")?);
        origin.shard_id = fields.text("shard_id")?;
        origin.sequence_number = fields.text("sequence_number")?;
        let state: ReplayState = text("replay_state")?
            .parse()
            .map_err(|e| corrupt(format!("replay_state: {e}")))?;
        let replay = match state {
            ReplayState::None => None,
            ReplayState::Pending | ReplayState::Done => {
                let started = fields.int("replay_started_at")?.unwrap_or(0);
                let replayed_at = match state {
                    ReplayState::Done => Some(time(fields.int("replayed_at")?.unwrap_or(started))?),
                    _ => None,
                };
                Some(ReplayMark {
                    generation: count("replay_generation")?,
                    message_id: MessageId::new(text("replay_message_id")?)
                        .map_err(|e| corrupt(format!("replay_message_id: {e}")))?,
                    target: QueueName::new(text("replay_target")?)
                        .map_err(|e| corrupt(format!("replay_target: {e}")))?,
                    started_at: time(started)?,
                    replayed_at,
                })
            }
        };
        Ok(DeadLetterEntry {
            attempts: count("attempts")?,
            exhausted: int("exhausted")? != 0,
            failures: count("failures")?,
            first_failed_at: time(int("first_failed_at")?)?,
            last_failed_at: time(int("last_failed_at")?)?,
            consumer_id: text("consumer_id")?,
            id,
            message,
            origin,
            error,
            replay,
            original_bytes: fields.bytes("original_bytes")?,
        })
    }
}
