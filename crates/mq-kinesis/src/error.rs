//! The error type of mq-kinesis.

use mq_core::BoxError;

use crate::producer::{MAX_PARTITION_KEY_CHARS, MAX_RECORD_BYTES};

/// The result type of mq-kinesis.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the Kinesis backend.
///
/// Converts into [`mq_core::Error`] (as [`mq_core::Error::Backend`] with this error as the
/// source, so it stays downcastable).
///
/// # Examples
///
/// ```
/// let err = mq_kinesis::Error::RecordTooLarge { index: 3, size: 2_000_000, limit: 1_048_576 };
/// assert!(err.to_string().contains("2000000"));
/// let core: mq_core::Error = err.into();
/// assert!(matches!(core, mq_core::Error::Backend { .. }));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A lease-store operation failed (connection, script, file system).
    #[error("lease store {operation} failed")]
    LeaseStore {
        /// What was being done (`"acquire"`, `"renew"`, ...).
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// A Kinesis API call failed.
    #[error("kinesis {operation} failed")]
    Kinesis {
        /// The API call (`"PutRecords"`, `"GetRecords"`, ...).
        operation: &'static str,
        /// The SDK's error.
        #[source]
        source: BoxError,
    },
    /// A record is above the Kinesis limit of 1 MiB (data plus partition key); nothing was sent.
    #[error(
        "record {index} is {size} bytes with its partition key, above the Kinesis limit of {limit} bytes; store the payload elsewhere and publish a reference"
    )]
    RecordTooLarge {
        /// Position in the published batch.
        index: usize,
        /// Data plus partition key, in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A partition key is empty or longer than 256 characters; nothing was sent.
    #[error(
        "partition key of record {index} has {len} characters; Kinesis accepts 1 to 256 (use a hashed key strategy)"
    )]
    InvalidPartitionKey {
        /// Position in the published batch.
        index: usize,
        /// Its length in characters.
        len: usize,
    },
    /// Kinesis refused a record after every retry, or at once when the error can never
    /// succeed (no such stream, no permission, a disabled KMS key).
    #[error("kinesis refused the record after {attempts} attempt(s): {code}: {message}")]
    RecordRejected {
        /// The error code (`ProvisionedThroughputExceededException`, `InternalFailure`; the
        /// request's code, such as `ResourceNotFoundException`, when the whole request failed;
        /// `RequestFailed` when it got no answer).
        code: String,
        /// The error message.
        message: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A record could not be decoded into a message.
    #[error("record {sequence_number} does not decode into a message")]
    Decode {
        /// The record's sequence number.
        sequence_number: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// An option has a value that cannot work.
    #[error("invalid option {field}: {reason}")]
    InvalidOption {
        /// The option.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// An enhanced fan-out call (`RegisterStreamConsumer`, `DescribeStreamConsumer`,
    /// `SubscribeToShard`) failed; the AWS error code is kept so callers can tell a deleted
    /// consumer (`ResourceNotFoundException`) from a network failure.
    #[error("kinesis {operation} failed: {message}")]
    FanOut {
        /// The API call.
        operation: &'static str,
        /// The AWS error code, when the service sent one.
        code: Option<String>,
        /// The error, with its sources.
        message: String,
    },
    /// A registered stream consumer did not become `ACTIVE` in time.
    #[error(
        "stream consumer {consumer_name} of stream {stream} is still {status} after {waited:?}"
    )]
    ConsumerNotActive {
        /// The stream.
        stream: String,
        /// The consumer's name.
        consumer_name: String,
        /// Its last status (`CREATING`, `DELETING`).
        status: String,
        /// How long it was waited for.
        waited: std::time::Duration,
    },
    /// The queue has been shut down.
    #[error("the kinesis queue has been shut down")]
    ShutDown,
    /// A call got no answer within its deadline, or was abandoned by a stop past its grace
    /// period; it counts as a failed call (retried, or the shard's lease moves).
    #[error("{operation} got no answer within {after:?}")]
    Deadline {
        /// The call (`"checkpoint"`, `"renew"`, `"PutRecords"`, ...).
        operation: &'static str,
        /// How long it was waited for.
        after: std::time::Duration,
    },
}

impl Error {
    /// The AWS error code of a failed enhanced fan-out call, when the service sent one.
    ///
    /// # Examples
    ///
    /// ```
    /// let err = mq_kinesis::Error::FanOut {
    ///     operation: "SubscribeToShard",
    ///     code: Some("ResourceNotFoundException".into()),
    ///     message: "consumer not found".into(),
    /// };
    /// assert_eq!(err.code(), Some("ResourceNotFoundException"));
    /// ```
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::FanOut { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn lease(operation: &'static str, source: impl Into<BoxError>) -> Self {
        Error::LeaseStore {
            operation,
            source: source.into(),
        }
    }

    pub(crate) fn kinesis(operation: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Kinesis {
            operation,
            source: source.into(),
        }
    }
}

impl Error {
    /// This error as the refusal of the message `id` in a publish report: a record Kinesis
    /// cannot take (its partition key, its size) names the message and the rule in its text.
    pub(crate) fn refusal_of(self, id: mq_core::MessageId) -> mq_core::Error {
        match self {
            Error::InvalidPartitionKey { len, .. } => mq_core::Error::InvalidMessage {
                id,
                field: "partition_key",
                reason: format!(
                    "has {len} characters; Kinesis accepts 1 to {MAX_PARTITION_KEY_CHARS} (use a shorter or hashed key strategy)"
                ),
            },
            Error::RecordTooLarge { size, limit, .. } => record_too_large(id, size, limit),
            other => other.into(),
        }
    }
}

/// A message whose record is above the Kinesis limit of `limit` bytes per record.
pub(crate) fn record_too_large(
    id: mq_core::MessageId,
    size: usize,
    limit: usize,
) -> mq_core::Error {
    mq_core::Error::InvalidMessage {
        id,
        field: "record",
        reason: format!(
            "is {size} bytes with its partition key, above the Kinesis limit of {limit} bytes per record, which no option raises; store the payload elsewhere and publish a reference"
        ),
    }
}

/// A refusal of the generic size check, restated with the Kinesis limit when raising
/// `max_message_bytes` could not help (the limit in force is at least the Kinesis one).
pub(crate) fn kinesis_size_refusal(e: mq_core::Error) -> mq_core::Error {
    match e {
        mq_core::Error::MessageTooLarge { id, size, limit } if limit >= MAX_RECORD_BYTES => {
            record_too_large(id, size, MAX_RECORD_BYTES)
        }
        other => other,
    }
}

impl From<Error> for mq_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidOption { field, reason } => {
                mq_core::Error::InvalidOption { field, reason }
            }
            Error::ShutDown => mq_core::Error::ShutDown { backend: "kinesis" },
            Error::LeaseStore { operation, .. } => mq_core::Error::backend("kinesis", operation, e),
            Error::Kinesis { operation, .. } | Error::FanOut { operation, .. } => {
                mq_core::Error::backend("kinesis", operation, e)
            }
            Error::Deadline { operation, .. } => mq_core::Error::backend("kinesis", operation, e),
            Error::ConsumerNotActive { .. } => {
                mq_core::Error::backend("kinesis", "RegisterStreamConsumer", e)
            }
            other => mq_core::Error::backend("kinesis", "publish", other),
        }
    }
}

/// An AWS SDK error with its causes (the service's code and message), each once, for logs and
/// error messages. The SDK's own `DisplayErrorContext` appends the raw response's `Debug`
/// (headers, body, request ids): kilobytes nobody should have to read.
pub(crate) fn error_text<E: std::error::Error + 'static>(e: &E) -> String {
    mq_core::ErrorChain::from_error(e).to_string()
}
