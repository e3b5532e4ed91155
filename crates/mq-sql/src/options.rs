//! [`SqlOptions`]: table, pool, schema and retention settings of a SQL queue.

use std::time::Duration;

use mq_core::CommonOptions;

use crate::error::Error;

/// Settings of a SQL queue: the table, the connection pool, the schema, wake-up, retention and
/// the options every backend shares ([`CommonOptions`]).
///
/// Defaults: table `mq_messages`, 10 s connect timeout, 10 connections, the table created if
/// missing, notifications on (PostgreSQL `LISTEN/NOTIFY`; ignored elsewhere), no background
/// retention, purge batches of 1000 rows, retention pass every 60 s, finished rows deleted rather
/// than archived, acknowledged rows kept (as `executed`) until retention removes them, and
/// `CommonOptions::default()`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mq_core::CommonOptions;
/// use mq_sql::SqlOptions;
///
/// let options = SqlOptions::default()
///     .table("jobs")
///     .common(CommonOptions::default().max_message_bytes(64 * 1024))
///     .max_connections(20)
///     .retention(Some(Duration::from_secs(7 * 24 * 3600)))
///     .archive(true);
/// assert_eq!(options.get_table(), "jobs");
/// options.validate()?;
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SqlOptions {
    table: String,
    connect_timeout: Duration,
    max_connections: u32,
    notify: bool,
    retention: Option<Duration>,
    retention_keep: Option<u64>,
    retention_interval: Duration,
    retention_batch: usize,
    archive: bool,
    delete_on_ack: bool,
    idempotency_window: Duration,
    create_schema: bool,
    common: CommonOptions,
}

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            table: "mq_messages".into(),
            connect_timeout: Duration::from_secs(10),
            max_connections: 10,
            notify: true,
            retention: None,
            retention_keep: None,
            retention_interval: Duration::from_secs(60),
            retention_batch: 1000,
            archive: false,
            delete_on_ack: false,
            idempotency_window: Duration::ZERO,
            create_schema: true,
            common: CommonOptions::default(),
        }
    }
}

impl SqlOptions {
    mq_core::__option_setters! {
        /// The table holding the messages (`[A-Za-z_][A-Za-z0-9_]{0,62}`); created if missing.
        table(name: impl Into<String>) name.into();
        /// Delete a message's row when it is acknowledged instead of keeping it as `executed`.
        ///
        /// One write less per message and no dead `executed` rows for retention to clean up: the
        /// fastest setting for high-volume queues. The cost: acknowledged messages leave no trace
        /// (no history, no archive), and a message id becomes free again once its message is
        /// acknowledged, so the duplicate-id check only covers messages still in the table.
        /// Failed, expired and dead-lettered rows are kept either way.
        ///
        /// ```
        /// let options = mq_sql::SqlOptions::default().delete_on_ack(true);
        /// assert!(options.get_delete_on_ack());
        /// ```
        delete_on_ack(on: bool) on;
        /// How long a message id stays taken after its message finished, however its row goes
        /// away: under [`delete_on_ack`](Self::delete_on_ack) an acknowledged message's id is
        /// remembered (in `<table>_ids`) for this long, and retention never removes a row younger
        /// than this. A publish that reuses such an id is refused as a duplicate, so a replay or a
        /// retried publish cannot run a message twice. Zero (the default) remembers nothing beyond
        /// the rows in the table.
        ///
        /// ```
        /// use std::time::Duration;
        ///
        /// let options = mq_sql::SqlOptions::default()
        ///     .delete_on_ack(true)
        ///     .idempotency_window(Duration::from_secs(24 * 3600));
        /// assert_eq!(options.get_idempotency_window(), Duration::from_secs(86_400));
        /// ```
        idempotency_window(d: Duration) d;
        /// The options every backend shares (message size limit, retry policy, ids, lifecycle
        /// observers).
        ///
        /// ```
        /// use mq_core::CommonOptions;
        ///
        /// let common = CommonOptions::default().max_message_bytes(1024);
        /// let options = mq_sql::SqlOptions::default().common(common);
        /// assert_eq!(options.get_common().get_max_message_bytes(), 1024);
        /// ```
        common(common: CommonOptions) common;
        /// Create the table and its indexes if missing (the default). With `false`, connecting only
        /// checks that the table exists and fails with an error naming it: for read-only tools and
        /// for deployments where an administrator owns the schema.
        ///
        /// ```
        /// let options = mq_sql::SqlOptions::default().create_schema(false);
        /// assert!(!options.get_create_schema());
        /// ```
        create_schema(on: bool) on;
        /// How long connecting (and acquiring a pooled connection) may take.
        connect_timeout(d: Duration) d;
        /// Largest number of pooled connections (used by `connect`, not `from_pool`).
        max_connections(n: u32) n;
        /// Wake idle consumers on publish (PostgreSQL `LISTEN/NOTIFY`); polling remains the
        /// fallback.
        notify(on: bool) on;
        /// Age after which finished rows (executed, failed, expired, dead-lettered) are purged by a
        /// background task of the queue; `None` turns the task off.
        retention(age: Option<Duration>) age;
        /// Keep at most this many finished rows in the table (the most recently finished, and
        /// any that finished at the same instant as the last one kept); older ones are purged by
        /// the background task, like rows past the [`retention`](Self::retention) age, which may
        /// be set too (whichever removes more wins). `None` (the default) sets no count. Rows
        /// inside the [`idempotency_window`](Self::idempotency_window) are always kept.
        ///
        /// ```
        /// let options = mq_sql::SqlOptions::default().retention_keep(Some(1_000_000));
        /// assert_eq!(options.get_retention_keep(), Some(1_000_000));
        /// ```
        retention_keep(rows: Option<u64>) rows;
        /// Time between two background retention passes.
        retention_interval(d: Duration) d;
        /// Rows deleted per statement by retention.
        retention_batch(n: usize) n;
        /// Move purged rows to `<table>_archive` instead of deleting them.
        archive(on: bool) on;
    }

    /// The table name.
    pub fn get_table(&self) -> &str {
        &self.table
    }
    /// The connect timeout.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
    /// The pool size.
    pub fn get_max_connections(&self) -> u32 {
        self.max_connections
    }
    /// Whether publish notifications are on.
    pub fn get_notify(&self) -> bool {
        self.notify
    }
    /// The retention age, if background retention is on.
    pub fn get_retention(&self) -> Option<Duration> {
        self.retention
    }
    /// The most finished rows retention keeps, if set.
    pub fn get_retention_keep(&self) -> Option<u64> {
        self.retention_keep
    }
    /// The retention interval.
    pub fn get_retention_interval(&self) -> Duration {
        self.retention_interval
    }
    /// The retention batch size.
    pub fn get_retention_batch(&self) -> usize {
        self.retention_batch
    }
    /// Whether purged rows are archived.
    pub fn get_archive(&self) -> bool {
        self.archive
    }
    /// Whether acknowledged rows are deleted at once.
    pub fn get_delete_on_ack(&self) -> bool {
        self.delete_on_ack
    }
    /// How long a finished message's id stays taken.
    pub fn get_idempotency_window(&self) -> Duration {
        self.idempotency_window
    }
    /// Whether connecting creates the table if missing.
    pub fn get_create_schema(&self) -> bool {
        self.create_schema
    }
    /// The options every backend shares.
    pub fn get_common(&self) -> &CommonOptions {
        &self.common
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> mq_core::Result<()> {
        validate_table(&self.table)?;
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must be above zero"));
        }
        if self.retention_batch == 0 || self.retention_batch > 100_000 {
            return Err(invalid(
                "retention_batch",
                format!("must be between 1 and 100000, got {}", self.retention_batch),
            ));
        }
        if self.retention_interval.is_zero() {
            return Err(invalid("retention_interval", "must be above zero"));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> mq_core::Error {
    mq_core::Error::invalid_option(field, reason)
}

/// Checks `name` against `[A-Za-z_][A-Za-z0-9_]{0,62}`: the only text ever put into SQL
/// without a bind parameter.
pub(crate) fn validate_table(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {
            name.len() <= 63 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
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
        for good in ["mq", "_x", "Jobs_2", &"a".repeat(63)] {
            assert!(validate_table(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1a",
            "a-b",
            "a;drop table x",
            "a b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(validate_table(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_validate() {
        assert!(SqlOptions::default().validate().is_ok());
        let e = SqlOptions::default()
            .max_connections(0)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("max_connections"));
    }
}
