//! [`SqlLeaseTable`]: the [`LeaseTable`] of mq-kinesis's table lease store, in one SQL table.
//!
//! Every operation is one statement on one row, atomic on its own: a create is an insert that
//! leaves an existing row alone, a conditional write or delete names the version it expects in
//! its `WHERE`, and a bump is an upsert that raises the version under the row's lock. Nothing
//! here holds a transaction open across statements; a statement that lost a deadlock or found
//! SQLite busy ran no change and runs again.

use std::fmt;

use async_trait::async_trait;
use mq_core::backend::{LeaseTable, MAX_LEASE_TABLE_KEY_BYTES, TableRecord};
use sqlx::{AssertSqlSafe, Executor, QueryBuilder};

use crate::checkpoint::{to_i64, to_u64, with_retries};
use crate::dialect::{Dialect, ReadRow, Sql};
use crate::migrate::migrate;
use crate::options::{SqlOptions, validate_table};
use crate::store::{connect_pool, derived};

/// The table [`SqlLeaseTable`] uses unless told otherwise.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn f() -> mq_core::Result<()> {
/// let table = mq_sql::SqliteLeaseTable::connect("sqlite://app.db", mq_sql::DEFAULT_LEASE_TABLE)
///     .await?;
/// assert_eq!(table.table(), "mq_leases");
/// # Ok(()) }
/// ```
pub const DEFAULT_LEASE_TABLE: &str = "mq_leases";

/// The advisory lock key serializing concurrent schema changes of lease tables.
const LEASE_SCHEMA_LOCK: i64 = 7_311_004;

/// Shard leases and instance sessions of mq-kinesis, as small versioned records in one table of
/// database `DB` (`sqlx::Postgres`, `sqlx::MySql` or `sqlx::Sqlite`): the
/// [`mq_core::backend::LeaseTable`] for a fleet that keeps its leases in the database it
/// already runs instead of Redis.
///
/// One row per (stream, kind, name) with its value (text) and version. Keys are compared and
/// sorted byte-wise, case-sensitively and without padding (`COLLATE "C"` on PostgreSQL,
/// `VARBINARY` on MySQL/MariaDB, SQLite's `BINARY`), and may be up to
/// [`MAX_LEASE_TABLE_KEY_BYTES`] bytes; a write with a longer key is refused. The clock is the
/// database's. The table is created from `migrations/<database>/0001_leases.sql` when the table
/// is opened, and its migrations are recorded in `<table>_versions`; its name is configurable
/// (`[A-Za-z_][A-Za-z0-9_]{0,62}`).
///
/// Use the aliases [`PgLeaseTable`](crate::PgLeaseTable),
/// [`MySqlLeaseTable`](crate::MySqlLeaseTable) and
/// [`SqliteLeaseTable`](crate::SqliteLeaseTable).
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use mq_core::backend::LeaseTable;
/// use mq_sql::PgLeaseTable;
///
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/app").await?;
/// let table: Arc<dyn LeaseTable> =
///     Arc::new(PgLeaseTable::from_pool(pool, "kinesis_leases").await?);
/// if table.put("orders", "lease", "shard-0", "{}", None).await? {
///     println!("created at version 1");
/// }
/// # Ok(()) }
/// ```
pub struct SqlLeaseTable<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    table: String,
}

impl<DB: sqlx::Database> fmt::Debug for SqlLeaseTable<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlLeaseTable")
            .field("database", &DB::NAME)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl<DB: sqlx::Database> Clone for SqlLeaseTable<DB> {
    fn clone(&self) -> Self {
        SqlLeaseTable {
            pool: self.pool.clone(),
            table: self.table.clone(),
        }
    }
}

/// Compiles only if `T` is a [`LeaseTable`]: each dialect module checks with it that the
/// generic impl below applies to its database (its bounds are only checked where used).
pub(crate) const fn assert_table<T: LeaseTable>() {}

impl<DB: sqlx::Database> SqlLeaseTable<DB> {
    /// The connection pool.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "sqlite")]
    /// # async fn f(table: mq_sql::SqliteLeaseTable) {
    /// let pool: &sqlx::SqlitePool = table.pool();
    /// # let _ = pool; }
    /// ```
    pub fn pool(&self) -> &sqlx::Pool<DB> {
        &self.pool
    }

    /// The lease table's name.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "sqlite")]
    /// # async fn f(pool: sqlx::SqlitePool) -> mq_core::Result<()> {
    /// let table = mq_sql::SqliteLeaseTable::from_pool(pool, "leases").await?;
    /// assert_eq!(table.table(), "leases");
    /// # Ok(()) }
    /// ```
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl<DB: Dialect> SqlLeaseTable<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    /// Connects to `url` with a pool set up as the queue's (`sqlite://` files are created in WAL
    /// mode) and opens the lease table `table`, as [`from_pool`](Self::from_pool) does.
    ///
    /// # Errors
    ///
    /// A connect error naming the host and port (never the password), an invalid table name,
    /// or a failed migration.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "sqlite")]
    /// # async fn f() -> mq_core::Result<()> {
    /// let table =
    ///     mq_sql::SqliteLeaseTable::connect("sqlite://leases.db", mq_sql::DEFAULT_LEASE_TABLE)
    ///         .await?;
    /// # let _ = table; Ok(()) }
    /// ```
    pub async fn connect(url: &str, table: impl Into<String>) -> mq_core::Result<Self> {
        let pool = connect_pool::<DB>(url, &SqlOptions::default()).await?;
        Self::from_pool(pool, table).await
    }

    /// The lease table `table` of `pool`'s database (see [`DEFAULT_LEASE_TABLE`]); creates it,
    /// or applies the migrations it lacks, recording them in `<table>_versions` (on PostgreSQL
    /// under an advisory lock). Rows already in the table are kept.
    ///
    /// # Errors
    ///
    /// An invalid table name, or a failed migration ([`crate::Error::Migrate`] as the source).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "mysql")]
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::MySqlPool::connect("mysql://root@127.0.0.1:3306/app").await?;
    /// let table = mq_sql::MySqlLeaseTable::from_pool(pool, mq_sql::DEFAULT_LEASE_TABLE).await?;
    /// # let _ = table; Ok(()) }
    /// ```
    pub async fn from_pool(
        pool: sqlx::Pool<DB>,
        table: impl Into<String>,
    ) -> mq_core::Result<Self> {
        let table = table.into();
        validate_table(&table)?;
        let steps = DB::LEASE_MIGRATIONS
            .iter()
            .map(|(file, sql)| (*file, sql.replace("{table}", &table)))
            .collect();
        migrate(
            &pool,
            &table,
            Some(&derived(&table, "versions")),
            LEASE_SCHEMA_LOCK,
            steps,
            true,
        )
        .await?;
        Ok(SqlLeaseTable { pool, table })
    }

    /// `WHERE stream = .. AND kind = .. AND name = ..`, appended to `q`.
    fn key(q: &mut QueryBuilder<DB>, stream: &str, kind: &str, name: &str) {
        q.raw(" WHERE stream = ");
        q.text(stream.to_owned());
        q.raw(" AND kind = ");
        q.text(kind.to_owned());
        q.raw(" AND name = ");
        q.text(name.to_owned());
    }

    async fn clock(&self) -> Result<i64, sqlx::Error> {
        sqlx::query(AssertSqlSafe(DB::CLOCK_MS))
            .fetch_one(&self.pool)
            .await?
            .int("now_ms")
    }

    async fn select(
        &self,
        stream: &str,
        kind: &str,
        name: &str,
    ) -> Result<Option<TableRecord>, sqlx::Error> {
        let mut q = QueryBuilder::<DB>::new(format!("SELECT value, version FROM {}", self.table));
        Self::key(&mut q, stream, kind, name);
        q.build()
            .fetch_optional(&self.pool)
            .await?
            .map(|r| decode(&r))
            .transpose()
    }

    async fn select_all(
        &self,
        stream: &str,
        kind: &str,
    ) -> Result<Vec<(String, TableRecord)>, sqlx::Error> {
        // The name is read under another alias so that `ORDER BY name` sorts by the column (as
        // stored, byte-wise), not by its text form.
        let mut q = QueryBuilder::<DB>::new(format!(
            "SELECT {} AS record_name, value, version FROM {} WHERE stream = ",
            DB::lease_key_text("name"),
            self.table
        ));
        q.text(stream.to_owned());
        q.raw(" AND kind = ");
        q.text(kind.to_owned());
        q.raw(" ORDER BY name");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.text("record_name")?, decode(r)?)))
            .collect()
    }

    /// Inserts the record at version 1; false when it exists.
    async fn create(
        &self,
        stream: &str,
        kind: &str,
        name: &str,
        value: &str,
    ) -> Result<bool, sqlx::Error> {
        let mut q = QueryBuilder::<DB>::new(format!(
            "INSERT INTO {} (stream, kind, name, value, version) VALUES (",
            self.table
        ));
        q.text(stream.to_owned());
        q.raw(", ");
        q.text(kind.to_owned());
        q.raw(", ");
        q.text(name.to_owned());
        q.raw(", ");
        q.text(value.to_owned());
        q.raw(", 1)");
        q.raw(DB::LEASE_CREATE_CONFLICT);
        match q.build().execute(&self.pool).await {
            Ok(done) => Ok(DB::rows_affected(&done) == 1),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes the record at `expected + 1` if it is at `expected`; true when it was.
    async fn update(
        &self,
        stream: &str,
        kind: &str,
        name: &str,
        value: &str,
        expected: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut q = QueryBuilder::<DB>::new(format!("UPDATE {} SET value = ", self.table));
        q.text(value.to_owned());
        q.raw(", version = version + 1");
        Self::key(&mut q, stream, kind, name);
        q.raw(" AND version = ");
        q.int(expected);
        // The version always changes, so rows matched and rows changed agree (MySQL reports
        // either, depending on the client's flags).
        let done = q.build().execute(&self.pool).await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    async fn remove(
        &self,
        stream: &str,
        kind: &str,
        name: &str,
        expected: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut q = QueryBuilder::<DB>::new(format!("DELETE FROM {}", self.table));
        Self::key(&mut q, stream, kind, name);
        q.raw(" AND version = ");
        q.int(expected);
        let done = q.build().execute(&self.pool).await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    /// The upsert that creates the record at version 1 or raises its version; returns the new
    /// version.
    async fn upsert(&self, stream: &str, kind: &str, name: &str) -> Result<i64, sqlx::Error> {
        let t = &self.table;
        let mut q = QueryBuilder::<DB>::new(format!(
            "INSERT INTO {t} (stream, kind, name, value, version) VALUES ("
        ));
        q.text(stream.to_owned());
        q.raw(", ");
        q.text(kind.to_owned());
        q.raw(", ");
        q.text(name.to_owned());
        q.raw(", '', ");
        q.raw(DB::LEASE_BUMP_FIRST);
        q.raw(")");
        q.raw(&DB::lease_bump_conflict(t));
        // one connection: where the version is read back, it is this connection's to read
        let mut conn = self.pool.acquire().await?;
        let row = match q.build().fetch_optional(&mut *conn).await? {
            Some(row) => row,
            None => match DB::LEASE_BUMP_READ {
                Some(read) => {
                    sqlx::query(AssertSqlSafe(read))
                        .fetch_one(&mut *conn)
                        .await?
                }
                None => return Err(sqlx::Error::RowNotFound),
            },
        };
        row.int("version")
    }
}

/// A record's value and version.
fn decode(r: &impl ReadRow) -> Result<TableRecord, sqlx::Error> {
    Ok(TableRecord::new(
        r.text("value")?,
        to_u64(r.int("version")?),
    ))
}

/// Refuses a key no lease table stores: longer than [`MAX_LEASE_TABLE_KEY_BYTES`] (MySQL
/// outside strict mode would cut it, and two keys would become one).
fn check_keys(stream: &str, kind: &str, name: &str) -> mq_core::Result<()> {
    for (what, key) in [
        ("lease-table stream", stream),
        ("lease-table kind", kind),
        ("lease-table record", name),
    ] {
        if key.len() > MAX_LEASE_TABLE_KEY_BYTES {
            return Err(mq_core::Error::invalid_name(
                what,
                key,
                format!(
                    "is {} bytes long; at most {MAX_LEASE_TABLE_KEY_BYTES} are stored",
                    key.len()
                ),
            ));
        }
    }
    Ok(())
}

#[async_trait]
impl<DB: Dialect> LeaseTable for SqlLeaseTable<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    async fn now_ms(&self) -> mq_core::Result<u64> {
        let ms = with_retries("lease table clock", || self.clock()).await?;
        Ok(to_u64(ms))
    }

    async fn get(
        &self,
        stream: &str,
        kind: &str,
        name: &str,
    ) -> mq_core::Result<Option<TableRecord>> {
        with_retries("lease table get", || self.select(stream, kind, name)).await
    }

    async fn list(&self, stream: &str, kind: &str) -> mq_core::Result<Vec<(String, TableRecord)>> {
        with_retries("lease table list", || self.select_all(stream, kind)).await
    }

    async fn put(
        &self,
        stream: &str,
        kind: &str,
        name: &str,
        value: &str,
        expected: Option<u64>,
    ) -> mq_core::Result<bool> {
        check_keys(stream, kind, name)?;
        match expected {
            None => {
                with_retries("lease table create", || {
                    self.create(stream, kind, name, value)
                })
                .await
            }
            Some(v) => {
                let v = to_i64(v)?;
                with_retries("lease table put", || {
                    self.update(stream, kind, name, value, v)
                })
                .await
            }
        }
    }

    async fn delete(
        &self,
        stream: &str,
        kind: &str,
        name: &str,
        expected: u64,
    ) -> mq_core::Result<bool> {
        let v = to_i64(expected)?;
        with_retries("lease table delete", || self.remove(stream, kind, name, v)).await
    }

    async fn bump(&self, stream: &str, kind: &str, name: &str) -> mq_core::Result<u64> {
        check_keys(stream, kind, name)?;
        let v = with_retries("lease table bump", || self.upsert(stream, kind, name)).await?;
        Ok(to_u64(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_longer_than_the_limit_are_refused() {
        let longest = "é".repeat(MAX_LEASE_TABLE_KEY_BYTES / 2) + "x";
        assert!(check_keys(&longest, &longest, &longest).is_ok());
        let over = "é".repeat(MAX_LEASE_TABLE_KEY_BYTES / 2 + 1);
        let err = check_keys("s", "lease", &over).unwrap_err();
        assert!(err.to_string().contains("256 bytes"), "{err}");
        assert!(check_keys(&over, "lease", "n").is_err());
        assert!(check_keys("s", &over, "n").is_err());
    }
}
