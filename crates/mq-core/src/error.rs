//! The error type of mq-core, which every backend error converts into.

use std::error::Error as StdError;

use crate::message::MessageId;
use crate::queue_name::QueueName;

/// A boxed error from a driver, a handler or an observer.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The result type of mq-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a queue operation.
///
/// Messages are lower-case, name the offending value and, where there is one, what to do next.
/// The error of a driver is kept as the [`source`](std::error::Error::source) and stays
/// downcastable (`error.source().and_then(|e| e.downcast_ref::<sqlx::Error>())`).
///
/// # Examples
///
/// ```
/// use mq_core::{Error, QueueName};
///
/// let err = QueueName::new("bad name!").unwrap_err();
/// assert!(matches!(err, Error::InvalidQueueName { .. }));
/// assert!(err.to_string().contains("bad name!"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A queue name breaks the naming rules.
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidQueueName {
        /// The name as given (cut at 200 characters).
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A message id breaks the id rules.
    #[error("invalid message id {id:?}: {reason}")]
    InvalidMessageId {
        /// The id as given.
        id: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A message type is empty or too long.
    #[error("invalid message type {message_type:?}: {reason}")]
    InvalidMessageType {
        /// The type as given.
        message_type: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The queue was used before [`MessageQueue::register`](crate::MessageQueue::register).
    #[error(
        "queue {queue} is not registered: call register(\"{queue}\") before publishing or consuming"
    )]
    NotRegistered {
        /// The (resolved) queue name.
        queue: QueueName,
    },
    /// A payload could not be turned into JSON.
    #[error("payload of message type {message_type:?} does not serialize to JSON")]
    Payload {
        /// The message type the payload belongs to.
        message_type: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// A message breaks a rule of what can be stored and read back (a payload nested too deep, a
    /// character or length a backend's columns cannot hold); it alone is refused.
    #[error("message {id} cannot be stored: {field} {reason}")]
    InvalidMessage {
        /// The message id.
        id: MessageId,
        /// The offending field (`"payload"`, `"partition_key"`, ...).
        field: &'static str,
        /// What is wrong and what the rule is.
        reason: String,
    },
    /// A message is larger than the configured limit.
    #[error(
        "message {id} is {size} bytes, above the limit of {limit} bytes; raise max_message_bytes or store the payload elsewhere"
    )]
    MessageTooLarge {
        /// The message id.
        id: MessageId,
        /// Its serialized size in bytes.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A message with the same id is already stored.
    #[error("message id {id} already exists in queue {queue}")]
    DuplicateId {
        /// The duplicated id.
        id: MessageId,
        /// The queue it was published to.
        queue: QueueName,
    },
    /// A message with the same unique key waits or runs in the queue (or finished within its
    /// unique window).
    #[error("unique key {key:?} is held by message {holder} in queue {queue}")]
    DuplicateKey {
        /// The key.
        key: String,
        /// The message that holds it.
        holder: MessageId,
        /// The queue.
        queue: QueueName,
    },
    /// An option has a value that cannot work.
    #[error("invalid option {field}: {reason}")]
    InvalidOption {
        /// The option's name.
        field: &'static str,
        /// Why the value cannot work.
        reason: String,
    },
    /// The queue (or consumer) has been shut down.
    #[error("the {backend} queue has been shut down")]
    ShutDown {
        /// The backend name.
        backend: &'static str,
    },
    /// An [`ImmediateQueue`](https://docs.rs/mq-memory) publish found no consumer to run.
    #[error("no consumer is attached to queue {queue}: start one with consume() before publishing")]
    NoConsumer {
        /// The queue.
        queue: QueueName,
    },
    /// The handler did not ack the message (immediate execution only).
    #[error("handler did not acknowledge message {id}: {outcome}")]
    NotAcknowledged {
        /// The message.
        id: MessageId,
        /// What the handler returned instead.
        outcome: String,
    },
    /// A dead-letter store refused messages.
    #[error("dead-letter store refused {count} message(s)")]
    DeadLetter {
        /// How many messages were refused.
        count: usize,
        /// The store's error.
        #[source]
        source: BoxError,
    },
    /// A Kinesis sequence number is not 1 to 128 decimal digits.
    #[error("invalid sequence number {value:?}: use 1 to 128 decimal digits")]
    InvalidSequenceNumber {
        /// The value as given.
        value: String,
    },
    /// A received message's payload does not decode into the type asked for.
    #[error(
        "payload of message {id} (type {message_type:?}) does not decode into the requested type"
    )]
    PayloadDecode {
        /// The message id.
        id: MessageId,
        /// The message type.
        message_type: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// A table, collection, stream or key name could be used to inject a query, or breaks the
    /// server's own limits.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// What the name is for (`"table"`, `"collection"`, `"stream"`, ...).
        kind: &'static str,
        /// The name as given (cut at 200 characters).
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// A dead-letter entry id is malformed.
    #[error("invalid dead-letter entry id {id:?}: {reason}")]
    InvalidEntryId {
        /// The id as given.
        id: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A stored dead-letter entry could not be read back (edited by hand, or written by a newer
    /// version).
    #[error("dead-letter entry {id} is corrupt: {reason}")]
    CorruptDeadLetter {
        /// The entry id (or the row key).
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend's server could not be reached or refused the connection.
    #[error("cannot connect to {backend} at {target}")]
    Connect {
        /// The backend name.
        backend: &'static str,
        /// Host and port (or file) from the URL, never the credentials.
        target: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// The backend cannot do what was asked (for example report queue statistics).
    #[error("the {backend} backend does not support {operation}")]
    Unsupported {
        /// The backend name.
        backend: &'static str,
        /// What was asked.
        operation: &'static str,
    },
    /// The backend's store failed (connection, query, protocol).
    #[error("{backend} {operation} failed")]
    Backend {
        /// The backend name.
        backend: &'static str,
        /// What was being done (`"claim"`, `"publish"`, ...).
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Wraps a driver error as [`Error::Backend`].
    ///
    /// # Examples
    ///
    /// ```
    /// let io = std::io::Error::other("connection reset");
    /// let err = mq_core::Error::backend("sql", "claim", io);
    /// assert_eq!(err.to_string(), "sql claim failed");
    /// ```
    pub fn backend(
        backend: &'static str,
        operation: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            backend,
            operation,
            source: source.into(),
        }
    }

    /// Builds [`Error::InvalidOption`].
    ///
    /// # Examples
    ///
    /// ```
    /// let err = mq_core::Error::invalid_option("batch_size", "must be at least 1");
    /// assert_eq!(err.to_string(), "invalid option batch_size: must be at least 1");
    /// ```
    pub fn invalid_option(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidOption {
            field,
            reason: reason.into(),
        }
    }

    /// Builds [`Error::InvalidName`], cutting an absurdly long name so the message stays
    /// readable.
    ///
    /// # Examples
    ///
    /// ```
    /// let err = mq_core::Error::invalid_name("table", "a;drop", "use letters, digits and underscores");
    /// assert_eq!(err.to_string(), "invalid table name \"a;drop\": use letters, digits and underscores");
    /// ```
    pub fn invalid_name(kind: &'static str, name: &str, reason: impl Into<String>) -> Self {
        Error::InvalidName {
            kind,
            name: name.chars().take(200).collect(),
            reason: reason.into(),
        }
    }

    /// Builds [`Error::CorruptDeadLetter`].
    ///
    /// # Examples
    ///
    /// ```
    /// let err = mq_core::Error::corrupt_dead_letter("01J...", "attempts = -1");
    /// assert_eq!(err.to_string(), "dead-letter entry 01J... is corrupt: attempts = -1");
    /// ```
    pub fn corrupt_dead_letter(id: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::CorruptDeadLetter {
            id: id.into(),
            reason: reason.to_string(),
        }
    }
}
