//! The error type of mq-dlq.

use mq_core::BoxError;

/// The result type of mq-dlq.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a dead-letter store or a replay.
///
/// The driver's error is kept as the [`source`](std::error::Error::source); the message never
/// repeats it.
///
/// # Examples
///
/// ```
/// use mq_dlq::Error;
/// use mq_core::EntryId;
///
/// let err = "not an id!".parse::<EntryId>().unwrap_err();
/// assert!(matches!(err, Error::InvalidEntryId { .. }));
/// assert!(err.to_string().contains("not an id!"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option has a value that cannot work.
    #[error("invalid option {field}: {reason}")]
    InvalidOption {
        /// The option's name.
        field: &'static str,
        /// Why the value cannot work.
        reason: String,
    },
    /// A table or collection name breaks the naming rules.
    #[error(
        "invalid table name {name:?}: use 1 to 55 ASCII letters, digits or underscores, not starting with a digit"
    )]
    InvalidTableName {
        /// The name as given.
        name: String,
    },
    /// A dead-letter entry id is malformed.
    #[error("invalid dead-letter entry id {id:?}: {reason}")]
    InvalidEntryId {
        /// The id as given.
        id: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A stored entry could not be read back (edited by hand, or written by a newer version).
    #[error("dead-letter entry {id} is corrupt: {reason}")]
    Corrupt {
        /// The entry id (or the row key).
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store's database failed (connection, query, protocol).
    #[error("dead-letter store {operation} failed")]
    Store {
        /// What was being done (`"insert"`, `"list"`, ...).
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// The queue refused a replay publish as a whole.
    #[error("replay publish to queue {queue} failed")]
    Publish {
        /// The target queue.
        queue: String,
        /// The queue's error.
        #[source]
        source: mq_core::Error,
    },
}

impl Error {
    /// Wraps a driver error as [`Error::Store`].
    ///
    /// # Examples
    ///
    /// ```
    /// let err = mq_dlq::Error::store("list", std::io::Error::other("reset"));
    /// assert_eq!(err.to_string(), "dead-letter store list failed");
    /// ```
    pub fn store(operation: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Store {
            operation,
            source: source.into(),
        }
    }

    /// Builds [`Error::InvalidOption`].
    ///
    /// # Examples
    ///
    /// ```
    /// let err = mq_dlq::Error::invalid_option("batch_size", "must be at least 1");
    /// assert_eq!(err.to_string(), "invalid option batch_size: must be at least 1");
    /// ```
    pub fn invalid_option(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidOption {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(id: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Corrupt {
            id: id.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<mq_core::Error> for Error {
    fn from(e: mq_core::Error) -> Self {
        Error::store("dead-letter store", e)
    }
}

/// Milliseconds since the epoch, the unit every store keeps times in.
pub(crate) fn to_ms(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

impl From<Error> for mq_core::Error {
    fn from(e: Error) -> Self {
        mq_core::Error::backend("dlq", "dead-letter store", e)
    }
}

/// Checks `name` against `[A-Za-z_][A-Za-z0-9_]{0,54}`, the only text put into SQL without a
/// bind parameter.
pub(crate) fn validate_table(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {
            name.len() <= 55 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidTableName {
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert!(validate_table("mq_dead_letters").is_ok());
        for bad in ["", "1a", "a-b", "a;drop", &"a".repeat(56)] {
            assert!(validate_table(bad).is_err(), "{bad}");
        }
    }
}
