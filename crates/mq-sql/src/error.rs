//! The error type of mq-sql.

use mq_core::BoxError;

/// The result type of mq-sql.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while setting up or running a SQL queue.
///
/// The public functions of this crate return [`mq_core::Error`]; every variant converts into it
/// (as [`mq_core::Error::Backend`] with backend `"sql"`, keeping this error as the source so it
/// stays downcastable, or as the matching [`mq_core::Error`] variant for bad names and options).
///
/// # Examples
///
/// ```
/// use mq_sql::SqlOptions;
///
/// let err = SqlOptions::default().table("bad name").validate().unwrap_err();
/// assert!(matches!(err, mq_core::Error::InvalidName { kind: "table", .. }));
/// assert!(err.to_string().contains("bad name"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configured table name could be used to inject SQL.
    #[error(
        "invalid table name {name:?}: use 1 to 63 ASCII letters, digits or underscores, not starting with a digit"
    )]
    InvalidTableName {
        /// The name as given.
        name: String,
    },
    /// An option has a value that cannot work.
    #[error("invalid option {field}: {reason}")]
    InvalidOption {
        /// The option's name.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The database could not be reached or refused the connection.
    #[error(
        "cannot connect to {database} at {target}; check that the server runs and the URL is right"
    )]
    Connect {
        /// `"postgres"`, `"mysql"` or `"sqlite"`.
        database: &'static str,
        /// Host and port (or file) from the URL, never the credentials.
        target: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// The server is too old for `FOR UPDATE SKIP LOCKED`.
    #[error("{database} server version {version} is not supported: {requirement}")]
    UnsupportedServer {
        /// `"mysql"`.
        database: &'static str,
        /// The version the server reported.
        version: String,
        /// What is needed.
        requirement: &'static str,
    },
    /// [`SqlOptions::create_schema`](crate::SqlOptions::create_schema)`(false)` is set and the
    /// table does not exist.
    #[error(
        "table {table} does not exist: connect once with create_schema(true), or have an administrator create it"
    )]
    MissingTable {
        /// The table that was looked for.
        table: String,
    },
    /// [`SqlOptions::create_schema`](crate::SqlOptions::create_schema)`(false)` is set and the
    /// table lacks migrations this version needs.
    #[error(
        "table {table} lacks schema migrations {pending}: connect once with create_schema(true) as a role that may change the schema, or run `mqctl queue migrate`"
    )]
    SchemaBehind {
        /// The queue table.
        table: String,
        /// The migrations it lacks, comma-separated.
        pending: String,
    },
    /// Creating or upgrading the schema failed.
    #[error("schema migration {migration} of table {table} failed")]
    Migrate {
        /// The migration file.
        migration: &'static str,
        /// The queue table.
        table: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// A statement failed.
    #[error("sql {operation} failed")]
    Database {
        /// What was being done (`"claim"`, `"publish"`, `"purge"`, ...).
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// A handler's transaction could not take over the completion of a message: the claim it
    /// was delivered under no longer holds it (the lease expired and another consumer claimed
    /// it, it was cancelled, or it is completed already). Nothing was changed; roll the
    /// transaction back so none of its writes commit.
    #[error(
        "message {id} of queue {queue} cannot be completed in this transaction: {reason}; roll the transaction back"
    )]
    NotHeld {
        /// The queue.
        queue: String,
        /// The message.
        id: String,
        /// Why the claim no longer holds it.
        reason: String,
    },
    /// A stored row could not be turned into a message.
    #[error("row {id:?} of table {table} is malformed: {reason}")]
    Decode {
        /// The row's message id (as stored).
        id: String,
        /// The queue table.
        table: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<Error> for mq_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Database { operation, source } => {
                mq_core::Error::backend("sql", operation, source)
            }
            Error::InvalidOption { field, reason } => {
                mq_core::Error::InvalidOption { field, reason }
            }
            Error::Connect { .. }
            | Error::UnsupportedServer { .. }
            | Error::MissingTable { .. }
            | Error::SchemaBehind { .. } => mq_core::Error::backend("sql", "connect", e),
            Error::Migrate { .. } => mq_core::Error::backend("sql", "migrate", e),
            Error::NotHeld { .. } => mq_core::Error::backend("sql", "complete in transaction", e),
            Error::InvalidTableName { name } => mq_core::Error::invalid_name(
                "table",
                &name,
                "use 1 to 63 ASCII letters, digits or underscores, not starting with a digit",
            ),
            other => mq_core::Error::backend("sql", "decode", other),
        }
    }
}

/// Shorthand for a driver error as an [`mq_core::Error`].
pub(crate) fn backend(operation: &'static str) -> impl FnOnce(sqlx::Error) -> mq_core::Error {
    move |e| mq_core::Error::backend("sql", operation, e)
}
