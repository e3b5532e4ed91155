//! [`Dialect`]: what really differs between the SQL databases. The queue store
//! ([`SqlStore`]), the checkpoint store, the dead-letter store and the lease table are written
//! once, generic over it; each database implements it in one file of `dialect/`.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mq_core::backend::Claim;
use mq_core::{Message, QueueName};
use sqlx::{ColumnIndex, Decode, Encode, IntoArguments, QueryBuilder, Row, Type};

use crate::error::Error;
use crate::options::SqlOptions;
use crate::retention::Cutoff;
use crate::store::{CompletionRow, Names, RawRow, SqlStore};

#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// `(file, text)` of the migration `$file` of `$database`, embedded at build time.
macro_rules! migration {
    ($database:literal, $file:literal) => {
        (
            concat!($database, "/", $file),
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/migrations/",
                $database,
                "/",
                $file
            )),
        )
    };
}
pub(crate) use migration;

/// The migration constants of a [`Dialect`] impl: the files in `migrations/$database/`, with the
/// queue table's own later steps of that database (`$queue`, in order).
macro_rules! migrations {
    ($database:literal $(, $queue:literal)*) => {
        const QUEUE_MIGRATIONS: &'static [(&'static str, &'static str)] = &[
            $crate::dialect::migration!($database, "0001_messages.sql"),
            $crate::dialect::migration!($database, "0002_remembered_ids.sql"),
            $crate::dialect::migration!($database, "0003_controls.sql"),
            $($crate::dialect::migration!($database, $queue),)*
        ];
        const CHECKPOINT_MIGRATION: (&'static str, &'static str) =
            $crate::dialect::migration!($database, "0001_checkpoints.sql");
        const DEAD_LETTER_MIGRATION: &'static str =
            $crate::dialect::migration!($database, "0001_dead_letters.sql").1;
        const LEASE_MIGRATIONS: &'static [(&'static str, &'static str)] =
            &[$crate::dialect::migration!($database, "0001_leases.sql")];
    };
}
pub(crate) use migrations;

/// Rows per multi-row statement where each row takes its own bound parameters (MySQL allows
/// 65535 of them per statement, SQLite 32766).
pub(crate) const CHUNK: usize = 1000;

/// The public aliases of one database (`$db`, called `$name` in their docs, behind `$feature`):
/// its queue, checkpoint store, dead-letter store and lease table; also checks that the generic
/// store impls apply to it.
macro_rules! aliases {
    (
        $db:ty, $name:literal, feature $feature:literal, pool $pool:ident:
        $queue:ident, $checkpoint:ident, $dead_letter:ident, $lease:ident
    ) => {
        #[doc = concat!("A SQL queue on ", $name, ".")]
        pub type $queue = crate::SqlQueue<$db>;

        #[doc = concat!("A [`SqlCheckpointStore`](crate::SqlCheckpointStore) on ", $name, ".")]
        pub type $checkpoint = crate::SqlCheckpointStore<$db>;

        #[doc = concat!(
            "A [`SqlDeadLetterStore`](crate::SqlDeadLetterStore) on ", $name,
            " (feature `", $feature, "`)."
        )]
        ///
        /// # Examples
        ///
        /// ```no_run
        #[doc = concat!(
            "# async fn f(pool: mq_sql::sqlx::", stringify!($pool), ") -> mq_core::Result<()> {"
        )]
        /// use mq_core::DeadLetterStore;
        #[doc = concat!("use mq_sql::", stringify!($dead_letter), ";")]
        ///
        #[doc = concat!(
            "let store = ", stringify!($dead_letter),
            "::new(pool, mq_sql::DEFAULT_DEAD_LETTER_TABLE)?;"
        )]
        /// store.migrate().await?;
        /// # Ok(()) }
        /// ```
        pub type $dead_letter = crate::SqlDeadLetterStore<$db>;

        const _: () = crate::dead_letter::assert_store::<$dead_letter>();

        #[doc = concat!(
            "A [`SqlLeaseTable`](crate::SqlLeaseTable) on ", $name, " (feature `", $feature, "`)."
        )]
        ///
        /// # Examples
        ///
        /// ```no_run
        #[doc = concat!(
            "# async fn f(pool: mq_sql::sqlx::", stringify!($pool), ") -> mq_core::Result<()> {"
        )]
        /// use mq_core::backend::LeaseTable;
        #[doc = concat!("use mq_sql::", stringify!($lease), ";")]
        ///
        #[doc = concat!(
            "let table = ", stringify!($lease),
            "::from_pool(pool, mq_sql::DEFAULT_LEASE_TABLE).await?;"
        )]
        /// let now = table.now_ms().await?;
        /// # let _ = now; Ok(()) }
        /// ```
        pub type $lease = crate::SqlLeaseTable<$db>;

        const _: () = crate::lease_table::assert_table::<$lease>();
    };
}
pub(crate) use aliases;

/// One SQL database: SQL fragments, time encoding, and the steps whose algorithm differs
/// (claiming, batch writes). Sealed: it is `pub` only so that it may bound the public generic
/// impls, but it lives in a private module, so users can neither name nor implement it. Adding
/// a database is one new file in `dialect/`.
pub trait Dialect: sqlx::Database<Arguments: IntoArguments<Self>, Row: ReadRow> {
    /// The name in errors (`"postgres"`, `"mysql"`, `"sqlite"`).
    const KIND: &'static str;
    /// The queue table's migrations: (file, template with `{table}`-style placeholders).
    const QUEUE_MIGRATIONS: &'static [(&'static str, &'static str)];
    /// The checkpoint table's migration (`{table}` placeholder).
    const CHECKPOINT_MIGRATION: (&'static str, &'static str);
    /// The dead-letter table's migration (`{table}` and `{idx_...}` placeholders).
    const DEAD_LETTER_MIGRATION: &'static str;
    /// The lease table's migrations, in order (`{table}` placeholder).
    const LEASE_MIGRATIONS: &'static [(&'static str, &'static str)];
    /// The SQL functions of the larger and of the smaller of their arguments.
    const GREATEST_LEAST: (&'static str, &'static str) = ("GREATEST", "LEAST");
    /// Whether schema changes run in one transaction (false where DDL commits implicitly).
    const TRANSACTIONAL_DDL: bool;
    /// The statement that opens a read-modify-write transaction.
    const BEGIN_WRITE: &'static str;
    /// Run on the connection before [`BEGIN_WRITE`](Self::BEGIN_WRITE), if anything.
    const BEFORE_WRITE: Option<&'static str> = None;
    /// Appended to a `SELECT` that reads a row to change it in the same transaction.
    const LOCK_ROW: &'static str;
    /// `SELECT COUNT(*) AS n ...` over the catalog; the table name is bound after it.
    const TABLE_EXISTS: &'static str;

    /// How a point in time is stored.
    type Time: for<'q> Encode<'q, Self> + for<'r> Decode<'r, Self> + Type<Self> + Send + Sync;

    /// A time as stored.
    fn to_time(t: DateTime<Utc>) -> Self::Time;
    /// A stored time.
    fn from_time(t: Self::Time) -> Result<DateTime<Utc>, sqlx::Error>;
    /// Rows changed by a statement (an inherent method of each driver's result).
    fn rows_affected(done: &Self::QueryResult) -> u64;
    /// Appended to a dead-letter insert into `table`: a second letter for the same (queue,
    /// message id) adds a failure to the stored entry.
    fn dead_letter_upsert(table: &str) -> String {
        let (greatest, least) = Self::GREATEST_LEAST;
        format!(
            " ON CONFLICT (queue, message_id) DO UPDATE SET \
            failures = {table}.failures + 1, error = excluded.error, \
            error_text = excluded.error_text, exhausted = excluded.exhausted, \
            attempts = {greatest}({table}.attempts, excluded.attempts), \
            first_failed_at = {least}({table}.first_failed_at, excluded.first_failed_at), \
            last_failed_at = {greatest}({table}.last_failed_at, excluded.last_failed_at), \
            consumer_id = excluded.consumer_id"
        )
    }
    /// A statement run first in the schema transaction to serialize concurrent migrations.
    fn schema_lock(_key: i64) -> Option<String> {
        None
    }

    /// A pool for `url` set up as this crate needs it.
    fn connect_pool(
        url: &str,
        options: &SqlOptions,
    ) -> impl Future<Output = Result<sqlx::Pool<Self>, sqlx::Error>> + Send;
    /// Refuses a server that lacks what the queue needs.
    fn check_server(_pool: &sqlx::Pool<Self>) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }
    /// Starts database-specific background tasks of a new store (notification listener).
    fn start(_store: &SqlStore<Self>) {}
    /// Refuses a message the database cannot store.
    fn check_message(_message: &Message) -> mq_core::Result<()> {
        Ok(())
    }

    /// Stores `messages` (one queue); returns the ids stored, the others were duplicates.
    fn insert(
        store: &SqlStore<Self>,
        queue: &QueueName,
        messages: &[Message],
    ) -> impl Future<Output = mq_core::Result<Vec<String>>> + Send;
    /// Claims up to `limit` due messages of `queue` for `owner` and expires the scheduled ones
    /// past their expiry: (claimed rows, expired rows).
    fn claim(
        store: &SqlStore<Self>,
        queue: &QueueName,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> impl Future<Output = mq_core::Result<(Vec<RawRow>, Vec<RawRow>)>> + Send;
    /// Extends the leases `owner` still holds; returns the ids renewed.
    fn renew(
        store: &SqlStore<Self>,
        queue: &QueueName,
        owner: &str,
        claims: &[Claim],
        lease: Duration,
    ) -> impl Future<Output = mq_core::Result<Vec<String>>> + Send;
    /// Applies the completions `owner` still holds; returns (id, new status) of each applied.
    fn complete(
        store: &SqlStore<Self>,
        queue: &QueueName,
        owner: &str,
        rows: Vec<CompletionRow>,
    ) -> impl Future<Output = mq_core::Result<Vec<(String, String)>>> + Send;
    /// Deletes (or archives) up to `limit` finished rows past `cutoff` (older than its age,
    /// and beyond its count when it has one); returns how many.
    fn purge_batch(
        pool: &sqlx::Pool<Self>,
        names: &Names,
        cutoff: &Cutoff,
        limit: usize,
        archive: bool,
    ) -> impl Future<Output = mq_core::Result<u64>> + Send;
    /// A JSON column (NULL as `None`); stored as text unless the dialect says otherwise.
    fn read_json(row: &Self::Row, col: &str) -> Result<Option<serde_json::Value>, sqlx::Error> {
        row.opt_text(col)?
            .map(|s| serde_json::from_str(&s).map_err(|e| sqlx::Error::Decode(Box::new(e))))
            .transpose()
    }
    /// The clause that makes an insert into the remembered ids overwrite `forget_at` on a
    /// conflict.
    const REMEMBER_CONFLICT: &'static str =
        " ON CONFLICT (queue, id) DO UPDATE SET forget_at = excluded.forget_at";
    /// The clause that makes an insert into the pause table do nothing when the queue is paused
    /// already.
    const PAUSE_CONFLICT: &'static str = " ON CONFLICT (queue) DO NOTHING";
    /// Appended to a filter on waiting or running messages (by status), so that the database
    /// answers it from the index of those messages: PostgreSQL's indexes tell them apart by a
    /// column of their own, which a status test alone does not select.
    const LIVE_ROWS: &'static str = "";
    /// The test that selects finished messages (the statuses retention removes), as the
    /// database's index of finished messages is defined.
    fn finished_rows() -> String {
        crate::store::FINISHED_STATUS.to_owned()
    }
    /// The column that holds a message's unique key while it waits or runs (and is NULL
    /// otherwise, where the database has no partial indexes), under a unique index.
    const HELD_KEY: &'static str = "unique_key";
    /// Whether a migration statement failed only because an earlier, concurrent run of the same
    /// step already made its change (where schema changes are not transactional).
    fn already_applied(_e: &dyn sqlx::error::DatabaseError) -> bool {
        false
    }
    /// The current time as a SQL expression, for queue statistics.
    fn stats_now() -> String;
    /// The current time as a SQL expression, taken when the statement runs even inside a longer
    /// transaction (for a lease fence in the caller's transaction).
    fn statement_now() -> String {
        Self::stats_now()
    }
    /// Milliseconds from the time expression `then` to `now`, as a SQL integer expression.
    fn age_ms(then: &str, now: &str) -> String;

    /// A query of one row with the database's clock in Unix milliseconds as the BIGINT
    /// `now_ms`, read when the statement runs (a lease table's shared clock).
    const CLOCK_MS: &'static str;
    /// Appended to the insert of a new lease-table record so that a record that exists already
    /// is left alone and nothing is inserted. Where it is empty the insert fails with a unique
    /// violation instead, which the caller takes for the same answer.
    const LEASE_CREATE_CONFLICT: &'static str = " ON CONFLICT (stream, kind, name) DO NOTHING";
    /// The version a lease-table bump inserts a missing record at (1), as a SQL expression.
    const LEASE_BUMP_FIRST: &'static str = "1";
    /// Appended to a lease-table bump's insert into `table`: on an existing record, raise its
    /// version by one instead. The statement returns the new version as `version` unless
    /// [`LEASE_BUMP_READ`](Self::LEASE_BUMP_READ) reads it back.
    fn lease_bump_conflict(table: &str) -> String {
        format!(
            " ON CONFLICT (stream, kind, name) DO UPDATE SET version = {table}.version + 1 \
             RETURNING version"
        )
    }
    /// Where an insert cannot return rows: the query that reads the version a bump just wrote,
    /// as `version`, on the same connection.
    const LEASE_BUMP_READ: Option<&'static str> = None;
    /// A lease-table key column as text, for a select list (keys are stored as bytes where the
    /// database has no byte-wise text collation without padding).
    fn lease_key_text(column: &str) -> String {
        column.to_owned()
    }
}

/// A query under construction, whatever the database (placeholders and binds).
pub trait Sql {
    fn raw(&mut self, s: &str);
    fn text(&mut self, v: String);
    fn opt_text(&mut self, v: Option<String>);
    fn int(&mut self, v: i64);
    fn int4(&mut self, v: i32);
    fn time(&mut self, v: DateTime<Utc>);
}

impl<DB: Dialect> Sql for QueryBuilder<DB>
where
    String: for<'q> Encode<'q, DB> + Type<DB>,
    Option<String>: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    i32: for<'q> Encode<'q, DB> + Type<DB>,
{
    fn raw(&mut self, s: &str) {
        self.push(s);
    }
    fn text(&mut self, v: String) {
        self.push_bind(v);
    }
    fn opt_text(&mut self, v: Option<String>) {
        self.push_bind(v);
    }
    fn int(&mut self, v: i64) {
        self.push_bind(v);
    }
    fn int4(&mut self, v: i32) {
        self.push_bind(v);
    }
    fn time(&mut self, v: DateTime<Utc>) {
        self.push_bind(DB::to_time(v));
    }
}

/// A result row, whatever the database.
pub trait ReadRow {
    fn text(&self, col: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, col: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    /// A 32-bit integer column, widened.
    fn opt_int4(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    /// A 16-bit integer column, widened.
    fn opt_int2(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    fn time(&self, col: &str) -> Result<DateTime<Utc>, sqlx::Error>;
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error>;
}

impl<R: Row> ReadRow for R
where
    R::Database: Dialect,
    for<'c> &'c str: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i32: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i16: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        self.try_get(col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(col)
    }
    fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
        self.try_get(col)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(col)
    }
    fn opt_int4(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        Ok(self.try_get::<Option<i32>, _>(col)?.map(i64::from))
    }
    fn opt_int2(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        Ok(self.try_get::<Option<i16>, _>(col)?.map(i64::from))
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        <R::Database as Dialect>::from_time(self.try_get(col)?)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.try_get::<Option<<R::Database as Dialect>::Time>, _>(col)?
            .map(<R::Database as Dialect>::from_time)
            .transpose()
    }
}
