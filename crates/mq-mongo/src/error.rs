//! What mq-mongo adds to [`mq_core::Error`] as its source.

use std::time::Duration;

use mongodb::error::{ErrorKind, WriteFailure};

/// Duplicate key: a unique index refused a write.
const DUPLICATE_KEY: i32 = 11000;

/// The MongoDB-specific cause of an [`mq_core::Error`].
///
/// Every public function of this crate returns [`mq_core::Result`]; this type appears only as the
/// [`source`](std::error::Error::source) of [`mq_core::Error::Connect`] and
/// [`mq_core::Error::Backend`], where it downcasts for callers that want the details. Failed
/// driver calls carry the driver's own `mongodb::error::Error` as the source instead. Messages
/// never contain credentials.
///
/// # Examples
///
/// ```no_run
/// use mq_mongo::{Error, MongoOptions, MongoQueue};
///
/// # async fn run() {
/// match MongoQueue::connect("mongodb://127.0.0.1:1", MongoOptions::default()).await {
///     Err(mq_core::Error::Connect { target, source, .. }) => {
///         if let Some(Error::Unreachable { timeout, .. }) = source.downcast_ref::<Error>() {
///             eprintln!("nothing answered at {target} within {timeout:?}");
///         }
///     }
///     other => drop(other),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No server answered within the server selection timeout.
    #[error(
        "no MongoDB server answered within {timeout:?}: check that the server runs and that the address is right"
    )]
    Unreachable {
        /// The timeout that passed.
        timeout: Duration,
        /// What the driver said, when it said something.
        #[source]
        source: Option<Box<mongodb::error::Error>>,
    },
    /// `create_schema(false)` is set and a collection or index the store needs does not exist.
    #[error(
        "{object} does not exist: connect once with create_schema(true), or have an administrator create it"
    )]
    MissingSchema {
        /// The missing collection or index, with its namespace.
        object: String,
    },
    /// A stored message document does not have the layout mq-mongo writes.
    #[error("malformed message document {id:?} in queue {queue}: {reason}")]
    Malformed {
        /// The queue.
        queue: String,
        /// The document key.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

/// A failed driver call of `operation` as an mq-core error; the driver's error is the source.
pub(crate) fn backend(operation: &'static str, e: mongodb::error::Error) -> mq_core::Error {
    mq_core::Error::backend("mongo", operation, e)
}

/// True when a unique index refused the write.
pub(crate) fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// True for the error code of a write that a unique index refused.
pub(crate) fn is_duplicate_code(code: i32) -> bool {
    code == DUPLICATE_KEY
}
