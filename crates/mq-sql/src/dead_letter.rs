//! [`SqlDeadLetterStore`]: dead letters in a SQL table, on PostgreSQL, MySQL/MariaDB or SQLite.
//!
//! One table per store, one row per dead-lettered message (unique per queue and message id).
//! Times are kept as Unix milliseconds (`BIGINT`) on every database, the message as its JSON
//! text (exactly as it was), the error chain as a JSON array plus its joined text for searches,
//! and the original bytes of a record (Kinesis) in a binary column (`BYTEA`, `LONGBLOB`, `BLOB`).
//! The table's migrations are versioned like the queue table's, in a table of versions beside
//! it (`<table>_versions`).

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mq_core::{BoxError, DeadLetter, DeadLetterSink, MessageId};
use sqlx::{ColumnIndex, Decode, Encode, Executor, QueryBuilder, Row, Type};

use mq_core::{DeadLetterEntry, DeadLetterFilter, DeadLetterStore, EntryId, ReplayMark};

use crate::dialect::{Dialect, ReadRow, Sql, migration};
use crate::error::backend;
use crate::migrate::migrate;
use crate::options::validate_table;
use crate::store::derived;

/// The lock that serializes concurrent migrations of dead-letter tables (PostgreSQL).
const DEAD_LETTER_SCHEMA_LOCK: i64 = 7_311_003;

type Result<T> = mq_core::Result<T>;

fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The table [`SqlDeadLetterStore`] uses unless told otherwise.
pub const DEFAULT_DEAD_LETTER_TABLE: &str = "mq_dead_letters";

/// Dead letters in one SQL table, on a pool the caller hands in: PostgreSQL
/// ([`PgDeadLetterStore`](crate::PgDeadLetterStore)), MySQL/MariaDB
/// ([`MySqlDeadLetterStore`](crate::MySqlDeadLetterStore)) or SQLite
/// ([`SqliteDeadLetterStore`](crate::SqliteDeadLetterStore)).
///
/// [`DeadLetterStore::migrate`] creates the table and its indexes if missing, and brings a
/// table an earlier version created up to date (it records what it applied in
/// `<table>_versions`; idempotent); nothing is created before it is called, so a read-only tool
/// can open a store safely. A table that lacks the latest migration cannot be read or written
/// by this version until it is migrated.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use mq_core::{DeadLetterFilter, DeadLetterStore};
/// use mq_sql::PgDeadLetterStore;
///
/// let pool = mq_sql::sqlx::PgPool::connect("postgres://postgres@127.0.0.1/app").await?;
/// let store = PgDeadLetterStore::new(pool, "dead_letters")?;
/// store.migrate().await?;
/// println!("{} dead letters", store.count(&DeadLetterFilter::default()).await?);
/// # Ok(()) }
/// ```
pub struct SqlDeadLetterStore<DB: sqlx::Database> {
    pub(crate) pool: sqlx::Pool<DB>,
    pub(crate) table: String,
}

impl<DB: sqlx::Database> fmt::Debug for SqlDeadLetterStore<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlDeadLetterStore")
            .field("database", &DB::NAME)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl<DB: sqlx::Database> Clone for SqlDeadLetterStore<DB> {
    fn clone(&self) -> Self {
        SqlDeadLetterStore {
            pool: self.pool.clone(),
            table: self.table.clone(),
        }
    }
}

impl<DB: sqlx::Database> SqlDeadLetterStore<DB> {
    /// A store in `table` (`[A-Za-z_][A-Za-z0-9_]{0,62}`, e.g. [`DEFAULT_DEAD_LETTER_TABLE`])
    /// on `pool`. Nothing is read or written until the store is used.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidTableName`] (as [`mq_core::Error`]) for a name that could not be
    /// put into SQL safely.
    pub fn new(pool: sqlx::Pool<DB>, table: impl Into<String>) -> Result<Self> {
        let table = table.into();
        validate_table(&table)?;
        Ok(SqlDeadLetterStore { pool, table })
    }

    /// The pool.
    pub fn pool(&self) -> &sqlx::Pool<DB> {
        &self.pool
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }
}

/// Compiles only if `S` is a [`DeadLetterStore`]: each dialect module checks with it that the
/// generic impls below apply to its database (their bounds are only checked where used).
pub(crate) const fn assert_store<S: DeadLetterStore>() {}

impl<DB: Dialect> SqlDeadLetterStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
    Option<Vec<u8>>: for<'q> Encode<'q, DB>,
    Vec<u8>: for<'r> Decode<'r, DB> + Type<DB>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
{
    /// Runs the statement `write` puts together (`op` names it in errors); returns the rows it
    /// changed.
    async fn execute(
        &self,
        op: &'static str,
        write: impl FnOnce(&mut QueryBuilder<DB>),
    ) -> mq_core::Result<u64> {
        let mut q = QueryBuilder::<DB>::new("");
        write(&mut q);
        let done = q.build().execute(&self.pool).await.map_err(backend(op))?;
        Ok(DB::rows_affected(&done))
    }

    /// The integer `n` of the one row `q` selects.
    async fn fetch_n(&self, op: &'static str, q: &mut QueryBuilder<DB>) -> mq_core::Result<i64> {
        let row = q.build().fetch_one(&self.pool).await.map_err(backend(op))?;
        ReadRow::int(&row, "n").map_err(backend(op))
    }
}

#[async_trait]
impl<DB: Dialect> DeadLetterSink for SqlDeadLetterStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
    Option<Vec<u8>>: for<'q> Encode<'q, DB>,
    Vec<u8>: for<'r> Decode<'r, DB> + Type<DB>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
{
    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> std::result::Result<(), BoxError> {
        Ok(DeadLetterStore::insert(self, letters).await?)
    }
}

#[async_trait]
impl<DB: Dialect> DeadLetterStore for SqlDeadLetterStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
    Option<Vec<u8>>: for<'q> Encode<'q, DB>,
    Vec<u8>: for<'r> Decode<'r, DB> + Type<DB>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
{
    /// Creates the table or applies the migrations it lacks, in order, recording each in
    /// `<table>_versions`.
    async fn migrate(&self) -> mq_core::Result<()> {
        let steps = migrations::<DB>()
            .into_iter()
            .map(|(file, sql)| (file, render(sql, &self.table)))
            .collect();
        migrate(
            &self.pool,
            &self.table,
            Some(&derived(&self.table, "versions")),
            DEAD_LETTER_SCHEMA_LOCK,
            steps,
            true,
        )
        .await?;
        Ok(())
    }

    async fn insert(&self, letters: Vec<DeadLetter>) -> mq_core::Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let err = || backend("dead-letter insert");
        let mut tx = self.pool.begin().await.map_err(err())?;
        for letter in letters {
            let mut q = QueryBuilder::<DB>::new("");
            insert(&mut q, &self.table, &DeadLetterEntry::from_letter(letter))?;
            q.push(DB::dead_letter_upsert(&self.table));
            q.build().execute(&mut *tx).await.map_err(err())?;
        }
        tx.commit().await.map_err(err())
    }

    async fn list(&self, filter: &DeadLetterFilter) -> mq_core::Result<Vec<DeadLetterEntry>> {
        let mut q = QueryBuilder::<DB>::new("");
        select(&mut q, &self.table, filter);
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(backend("dead-letter list"))?;
        rows.iter().map(read_entry).collect()
    }

    async fn get(&self, id: &EntryId) -> mq_core::Result<Option<DeadLetterEntry>> {
        let filter = DeadLetterFilter::default().ids([id.clone()]);
        Ok(self.list(&filter).await?.into_iter().next())
    }

    async fn count(&self, filter: &DeadLetterFilter) -> mq_core::Result<u64> {
        let mut q = QueryBuilder::new(format!("SELECT COUNT(*) AS n FROM {}", self.table));
        where_clause(&mut q, filter, false);
        let n = self.fetch_n("dead-letter count", &mut q).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn begin_replay(
        &self,
        id: &EntryId,
        expected_generation: u32,
        mark: &ReplayMark,
    ) -> mq_core::Result<bool> {
        let changed = self
            .execute("dead-letter begin replay", |q| {
                begin_replay(q, &self.table, id, expected_generation, mark);
            })
            .await?;
        Ok(changed == 1)
    }

    async fn finish_replay(
        &self,
        id: &EntryId,
        message_id: &MessageId,
        at: DateTime<Utc>,
    ) -> mq_core::Result<bool> {
        let op = "dead-letter finish replay";
        let changed = self
            .execute(op, |q| finish_replay(q, &self.table, id, message_id, at))
            .await?;
        if changed > 0 {
            return Ok(true);
        }
        let mut q = QueryBuilder::new("");
        has_replay(&mut q, &self.table, id, message_id);
        Ok(self.fetch_n(op, &mut q).await? > 0)
    }

    async fn purge(&self, filter: &DeadLetterFilter) -> mq_core::Result<u64> {
        self.execute("dead-letter purge", |q| {
            q.raw(&format!("DELETE FROM {}", self.table));
            where_clause(q, filter, false);
        })
        .await
    }
}

pub(crate) const COLUMNS: &str = "id, queue, message_id, message_type, message, backend, shard_id, \
     sequence_number, error, error_text, exhausted, attempts, failures, first_failed_at, \
     last_failed_at, consumer_id, replay_state, replay_generation, replay_message_id, \
     replay_target, replay_started_at, replayed_at, original_bytes";

/// The dead-letter table's migrations on `DB`, in order: (file, template).
fn migrations<DB: Dialect>() -> Vec<(&'static str, &'static str)> {
    let (first, later) = match DB::KIND {
        "postgres" => (
            "postgres/0001_dead_letters.sql",
            [migration!(
                "postgres",
                "0002_dead_letters_original_bytes.sql"
            )],
        ),
        "mysql" => (
            "mysql/0001_dead_letters.sql",
            [migration!("mysql", "0002_dead_letters_original_bytes.sql")],
        ),
        _ => (
            "sqlite/0001_dead_letters.sql",
            [migration!("sqlite", "0002_dead_letters_original_bytes.sql")],
        ),
    };
    let mut steps = vec![(first, DB::DEAD_LETTER_MIGRATION)];
    steps.extend(later);
    steps
}

/// `INSERT INTO t (...) VALUES (...)` for a fresh entry; the caller appends its upsert clause.
pub(crate) fn insert<DB: Dialect>(
    q: &mut QueryBuilder<DB>,
    table: &str,
    e: &DeadLetterEntry,
) -> Result<()>
where
    QueryBuilder<DB>: Sql,
    Option<Vec<u8>>: for<'q> Encode<'q, DB>,
    Vec<u8>: Type<DB>,
{
    let encode = |err| mq_core::Error::backend("sql", "dead-letter insert", err);
    let message = serde_json::to_string(&e.message).map_err(encode)?;
    let error = serde_json::to_string(&e.error).map_err(encode)?;
    q.raw(&format!("INSERT INTO {table} ({COLUMNS}) VALUES ("));
    q.text(e.id.to_string());
    q.raw(", ");
    q.text(e.queue().as_str().to_owned());
    q.raw(", ");
    q.text(e.message.id.as_str().to_owned());
    q.raw(", ");
    q.text(e.message.message_type.clone());
    q.raw(", ");
    q.text(message);
    q.raw(", ");
    q.text(e.origin.backend.clone());
    q.raw(", ");
    q.opt_text(e.origin.shard_id.clone());
    q.raw(", ");
    q.opt_text(e.origin.sequence_number.clone());
    q.raw(", ");
    q.text(error);
    q.raw(", ");
    q.text(e.error.to_string());
    q.raw(", ");
    q.int(i64::from(e.exhausted));
    q.raw(", ");
    q.int(i64::from(e.attempts));
    q.raw(", ");
    q.int(i64::from(e.failures));
    q.raw(", ");
    q.int(to_ms(e.first_failed_at));
    q.raw(", ");
    q.int(to_ms(e.last_failed_at));
    q.raw(", ");
    q.text(e.consumer_id.clone());
    q.raw(", 'none', 0, NULL, NULL, NULL, NULL, ");
    q.push_bind(e.original_bytes.clone());
    q.raw(")");
    Ok(())
}

/// `SELECT <columns> FROM t WHERE <filter> ORDER BY id [LIMIT n]`.
pub(crate) fn select(q: &mut impl Sql, table: &str, f: &DeadLetterFilter) {
    q.raw(&format!("SELECT {COLUMNS} FROM {table}"));
    where_clause(q, f, true);
    q.raw(" ORDER BY id");
    if let Some(n) = f.get_limit() {
        q.raw(" LIMIT ");
        q.int(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// `column IN (...)` with each of `values` bound.
fn in_list(q: &mut impl Sql, column: &str, values: impl IntoIterator<Item = String>) {
    q.raw(column);
    q.raw(" IN (");
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            q.raw(", ");
        }
        q.text(v);
    }
    q.raw(")");
}

/// ` WHERE ...` for `f` (nothing when it selects everything); `paging` adds `after`.
pub(crate) fn where_clause(q: &mut impl Sql, f: &DeadLetterFilter, paging: bool) {
    let mut sep = " WHERE ";
    if let Some(queue) = f.get_queue() {
        q.raw(std::mem::replace(&mut sep, " AND "));
        q.raw("queue = ");
        q.text(queue.as_str().to_owned());
    }
    if let Some(t) = f.get_message_type() {
        q.raw(std::mem::replace(&mut sep, " AND "));
        q.raw("message_type = ");
        q.text(t.to_owned());
    }
    if let Some(t) = f.get_failed_after() {
        q.raw(std::mem::replace(&mut sep, " AND "));
        q.raw("last_failed_at >= ");
        q.int(to_ms(t));
    }
    if let Some(t) = f.get_failed_before() {
        q.raw(std::mem::replace(&mut sep, " AND "));
        q.raw("last_failed_at < ");
        q.int(to_ms(t));
    }
    if !f.get_ids().is_empty() {
        q.raw(std::mem::replace(&mut sep, " AND "));
        in_list(q, "id", f.get_ids().iter().map(ToString::to_string));
    }
    if !f.get_message_ids().is_empty() {
        q.raw(std::mem::replace(&mut sep, " AND "));
        let ids = f.get_message_ids().iter().map(|id| id.as_str().to_owned());
        in_list(q, "message_id", ids);
    }
    if let Some(needle) = f.get_error_contains() {
        q.raw(std::mem::replace(&mut sep, " AND "));
        q.raw("LOWER(error_text) LIKE ");
        q.text(like_pattern(needle));
        q.raw(" ESCAPE '!'");
    }
    if let Some(s) = f.get_replay_state() {
        q.raw(std::mem::replace(&mut sep, " AND "));
        q.raw("replay_state = ");
        q.text(s.as_str().to_owned());
    }
    if paging && let Some(after) = f.get_after() {
        q.raw(std::mem::replace(&mut sep, " AND "));
        q.raw("id > ");
        q.text(after.to_string());
    }
}

/// `%needle%`, lower-cased (ASCII), with `!`, `%` and `_` escaped by `!`.
fn like_pattern(needle: &str) -> String {
    let mut out = String::with_capacity(needle.len() + 2);
    out.push('%');
    for c in needle.to_ascii_lowercase().chars() {
        if matches!(c, '!' | '%' | '_') {
            out.push('!');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// Phase one of a replay (see [`DeadLetterStore::begin_replay`]).
pub(crate) fn begin_replay(
    q: &mut impl Sql,
    table: &str,
    id: &EntryId,
    expected_generation: u32,
    mark: &ReplayMark,
) {
    q.raw(&format!(
        "UPDATE {table} SET replay_state = 'pending', replayed_at = NULL, replay_generation = "
    ));
    q.int(i64::from(mark.generation));
    q.raw(", replay_message_id = ");
    q.text(mark.message_id.as_str().to_owned());
    q.raw(", replay_target = ");
    q.text(mark.target.as_str().to_owned());
    q.raw(", replay_started_at = ");
    q.int(to_ms(mark.started_at));
    q.raw(" WHERE id = ");
    q.text(id.to_string());
    q.raw(" AND replay_generation = ");
    q.int(i64::from(expected_generation));
    q.raw(" AND replay_state <> 'pending'");
}

/// Phase two of a replay.
pub(crate) fn finish_replay(
    q: &mut impl Sql,
    table: &str,
    id: &EntryId,
    message_id: &MessageId,
    at: DateTime<Utc>,
) {
    q.raw(&format!(
        "UPDATE {table} SET replay_state = 'done', replayed_at = COALESCE(replayed_at, "
    ));
    q.int(to_ms(at));
    q.raw(") WHERE id = ");
    q.text(id.to_string());
    q.raw(" AND replay_message_id = ");
    q.text(message_id.as_str().to_owned());
}

/// Whether entry `id` carries replay `message_id` (to tell "nothing to change" from "gone").
pub(crate) fn has_replay(q: &mut impl Sql, table: &str, id: &EntryId, message_id: &MessageId) {
    q.raw(&format!("SELECT COUNT(*) AS n FROM {table} WHERE id = "));
    q.text(id.to_string());
    q.raw(" AND replay_message_id = ");
    q.text(message_id.as_str().to_owned());
}

/// Reads one row back into an entry.
pub(crate) fn read_entry<R>(row: &R) -> mq_core::Result<DeadLetterEntry>
where
    R: Row + ReadRow,
    for<'c> &'c str: ColumnIndex<R>,
    Vec<u8>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    struct Fields<'r, R>(&'r R);
    impl<R> mq_core::DeadLetterFields for Fields<'_, R>
    where
        R: Row + ReadRow,
        for<'c> &'c str: ColumnIndex<R>,
        Vec<u8>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    {
        fn text(&self, name: &str) -> mq_core::Result<Option<String>> {
            self.0.opt_text(name).map_err(backend("dead-letter read"))
        }
        fn int(&self, name: &str) -> mq_core::Result<Option<i64>> {
            self.0.opt_int(name).map_err(backend("dead-letter read"))
        }
        fn bytes(&self, name: &str) -> mq_core::Result<Option<Vec<u8>>> {
            self.0
                .try_get::<Option<Vec<u8>>, _>(name)
                .map_err(backend("dead-letter read"))
        }
    }
    DeadLetterEntry::from_fields(&Fields(row))
}

/// The migration with the table's name and the names derived from it filled in.
fn render(sql: &str, table: &str) -> String {
    sql.replace("{idx_failed}", &derived(table, "failed"))
        .replace("{idx_type}", &derived(table, "type"))
        .replace("{idx_message}", &derived(table, "message"))
        .replace("{table}", table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("Time_Out"), "%time!_out%");
        assert_eq!(like_pattern("100%!"), "%100!%!!%");
    }

    #[test]
    fn derived_names_stay_within_identifier_limits() {
        let long = "a".repeat(63);
        let sql = render("{idx_failed} {idx_type} {idx_message}", &long);
        assert!(sql.split(' ').all(|name| name.len() <= 63), "{sql}");
        assert_eq!(render("{idx_type}", "dl"), "dl_type");
    }
}
