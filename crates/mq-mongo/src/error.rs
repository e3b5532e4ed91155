//! The error type of mq-mongo.

use std::time::Duration;

/// The result type of mq-mongo.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the MongoDB backend.
///
/// Every variant converts into [`mq_core::Error`]; driver errors stay reachable through
/// [`source`](std::error::Error::source) and downcast to `mongodb::error::Error`. Messages never
/// contain credentials: hosts are printed, user names and passwords are not.
///
/// # Examples
///
/// ```
/// use mq_mongo::Error;
///
/// let err = Error::invalid_option("collection", "must not be empty");
/// assert_eq!(err.to_string(), "invalid option collection: must not be empty");
/// let core: mq_core::Error = err.into();
/// assert!(matches!(core, mq_core::Error::InvalidOption { .. }));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection string could not be parsed.
    #[error("invalid MongoDB connection string: check its syntax (mongodb://host:port/...)")]
    InvalidUri {
        /// What the driver said.
        #[source]
        source: Box<mongodb::error::Error>,
    },
    /// No server answered within the server selection timeout.
    #[error(
        "cannot reach MongoDB at {hosts} within {timeout:?}: check that the server runs and the address is right"
    )]
    Unreachable {
        /// The hosts of the connection string (no credentials).
        hosts: String,
        /// The timeout that passed.
        timeout: Duration,
        /// What the driver said.
        #[source]
        source: Box<mongodb::error::Error>,
    },
    /// An option has a value that cannot work.
    #[error("invalid option {field}: {reason}")]
    InvalidOption {
        /// The option's name.
        field: &'static str,
        /// Why the value cannot work.
        reason: String,
    },
    /// A stored document does not have the layout mq-mongo writes.
    #[error("malformed message document {id:?} in queue {queue}: {reason}")]
    Malformed {
        /// The queue.
        queue: String,
        /// The message id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// A driver call failed.
    #[error("mongo {operation} failed")]
    Driver {
        /// What was being done (`"claim"`, `"publish"`, ...).
        operation: &'static str,
        /// What the driver said.
        #[source]
        source: Box<mongodb::error::Error>,
    },
}

impl Error {
    /// Builds [`Error::InvalidOption`].
    pub fn invalid_option(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidOption {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn driver(operation: &'static str, source: mongodb::error::Error) -> Self {
        Error::Driver {
            operation,
            source: Box::new(source),
        }
    }

    fn operation(&self) -> &'static str {
        match self {
            Error::InvalidUri { .. } | Error::Unreachable { .. } => "connect",
            Error::InvalidOption { .. } => "configure",
            Error::Malformed { .. } => "decode",
            Error::Driver { operation, .. } => operation,
        }
    }
}

impl From<Error> for mq_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidOption { field, reason } => mq_core::Error::invalid_option(field, reason),
            other => mq_core::Error::backend("mongo", other.operation(), other),
        }
    }
}

/// A driver error of `operation` as an mq-core error.
pub(crate) fn backend(operation: &'static str, e: mongodb::error::Error) -> mq_core::Error {
    Error::driver(operation, e).into()
}
