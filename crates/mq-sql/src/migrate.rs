//! Schema migrations: a table's migration files, applied in order and recorded in a table of
//! versions beside it, so that an upgrade applies exactly what an older version lacks.

use sqlx::{AssertSqlSafe, Connection, Executor, QueryBuilder};

use crate::dialect::{Dialect, ReadRow, Sql};
use crate::error::Error;
use crate::store::statements;

/// One schema migration of a queue table, as [`SqlStore::migrations`](crate::SqlStore::migrations)
/// reports it.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn f() -> mq_core::Result<()> {
/// let pool = mq_sql::sqlx::PgPool::connect_lazy("postgres://app@db/app").expect("url");
/// for m in mq_sql::SqlStore::migrations(&pool, &mq_sql::SqlOptions::default()).await? {
///     println!("{} {} {}", m.version, m.name, if m.applied { "applied" } else { "pending" });
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migration {
    /// Its number, from 1, in the order migrations apply.
    pub version: u32,
    /// Its file (`postgres/0002_remembered_ids.sql`).
    pub name: &'static str,
    /// Whether the table has it already.
    pub applied: bool,
}

/// The `CREATE TABLE` of a table of versions, the same on every database.
fn versions_table(versions: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {versions} (version INTEGER NOT NULL PRIMARY KEY, \
         name VARCHAR(255) NOT NULL, applied_at VARCHAR(64) NOT NULL)"
    )
}

/// The versions recorded in `versions`, or `None` when that table does not exist.
async fn applied<'c, DB: Dialect>(
    conn: impl Executor<'c, Database = DB>,
    versions: &str,
) -> Result<Option<Vec<u32>>, sqlx::Error>
where
    QueryBuilder<DB>: Sql,
{
    let sql = format!("SELECT version FROM {versions}");
    match sqlx::query(AssertSqlSafe(sql)).fetch_all(conn).await {
        Ok(rows) => Ok(Some(
            rows.iter()
                .map(|r| {
                    let v = r.opt_int4("version")?.unwrap_or(0);
                    Ok::<u32, sqlx::Error>(u32::try_from(v).unwrap_or(0))
                })
                .collect::<Result<_, _>>()?,
        )),
        Err(sqlx::Error::Database(e)) if is_missing_table(&*e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a database error says the table does not exist (PostgreSQL 42P01, MySQL 1146,
/// SQLite "no such table").
fn is_missing_table(e: &dyn sqlx::error::DatabaseError) -> bool {
    matches!(e.code().as_deref(), Some("42P01") | Some("42S02"))
        || e.message().contains("no such table")
}

/// Every migration of `steps` with whether `versions` records it, read-only.
pub(crate) async fn status<DB: Dialect>(
    pool: &sqlx::Pool<DB>,
    table: &str,
    versions: &str,
    steps: &[(&'static str, String)],
) -> Result<Vec<Migration>, Error>
where
    QueryBuilder<DB>: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let done = applied(pool, versions)
        .await
        .map_err(fail(table, "check"))?
        .unwrap_or_default();
    Ok(steps
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let version = u32::try_from(i + 1).unwrap_or(u32::MAX);
            Migration {
                version,
                name,
                applied: done.contains(&version),
            }
        })
        .collect())
}

fn fail(table: &str, migration: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    let table = table.to_owned();
    move |e| Error::Migrate {
        migration,
        table,
        source: Box::new(e),
    }
}

/// Brings `table` to the last of its migration `steps` ((file, rendered SQL), applied in order)
/// under the database's schema lock, recording each in `versions` (when given; a table without
/// one runs its idempotent steps every time). With `create` false it changes nothing and only
/// checks that the table exists and has every migration.
pub(crate) async fn migrate<DB: Dialect>(
    pool: &sqlx::Pool<DB>,
    table: &str,
    versions: Option<&str>,
    lock: i64,
    steps: Vec<(&'static str, String)>,
    create: bool,
) -> Result<(), Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    if !create {
        return check(pool, table, versions, &steps).await;
    }
    let mut conn = pool.acquire().await.map_err(fail(table, "connect"))?;
    if !DB::TRANSACTIONAL_DDL {
        return run_steps(&mut conn, table, versions, &steps).await;
    }
    let mut tx = conn
        .begin_with(AssertSqlSafe(DB::BEGIN_WRITE.to_owned()))
        .await
        .map_err(fail(table, "begin"))?;
    if let Some(sql) = DB::schema_lock(lock) {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(fail(table, "lock"))?;
    }
    run_steps(&mut tx, table, versions, &steps).await?;
    tx.commit().await.map_err(fail(table, "commit"))
}

/// Fails with [`Error::MissingTable`] unless `table` exists.
pub(crate) async fn require_table<DB: Dialect>(
    pool: &sqlx::Pool<DB>,
    table: &str,
) -> Result<(), Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    if table_exists(pool, table).await? {
        Ok(())
    } else {
        Err(Error::MissingTable {
            table: table.to_owned(),
        })
    }
}

/// Whether `table` exists.
async fn table_exists<'c, DB: Dialect>(
    conn: impl Executor<'c, Database = DB>,
    table: &str,
) -> Result<bool, Error>
where
    QueryBuilder<DB>: Sql,
{
    let mut q = QueryBuilder::<DB>::new(DB::TABLE_EXISTS);
    q.text(table.to_owned());
    let row = q
        .build()
        .fetch_one(conn)
        .await
        .map_err(fail(table, "check"))?;
    Ok(row.int("n").map_err(fail(table, "check"))? > 0)
}

/// The read-only check of [`migrate`] with `create` false.
async fn check<DB: Dialect>(
    pool: &sqlx::Pool<DB>,
    table: &str,
    versions: Option<&str>,
    steps: &[(&'static str, String)],
) -> Result<(), Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    require_table(pool, table).await?;
    let Some(versions) = versions else {
        return Ok(());
    };
    let pending: Vec<&'static str> = status(pool, table, versions, steps)
        .await?
        .into_iter()
        .filter(|m| !m.applied)
        .map(|m| m.name)
        .collect();
    if pending.is_empty() {
        Ok(())
    } else {
        Err(Error::SchemaBehind {
            table: table.to_owned(),
            pending: pending.join(", "),
        })
    }
}

/// Applies the steps `versions` does not record (all of them without `versions`).
async fn run_steps<DB: Dialect>(
    conn: &mut DB::Connection,
    table: &str,
    versions: Option<&str>,
    steps: &[(&'static str, String)],
) -> Result<(), Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    let done = match versions {
        Some(v) => {
            sqlx::raw_sql(AssertSqlSafe(versions_table(v)))
                .execute(&mut *conn)
                .await
                .map_err(fail(table, "versions"))?;
            if !table_exists(&mut *conn, table).await? {
                // The table was dropped but not its versions: build it again from the start.
                sqlx::raw_sql(AssertSqlSafe(format!("DELETE FROM {v}")))
                    .execute(&mut *conn)
                    .await
                    .map_err(fail(table, "versions"))?;
            }
            applied(&mut *conn, v)
                .await
                .map_err(fail(table, "versions"))?
                .unwrap_or_default()
        }
        None => Vec::new(),
    };
    for (i, (file, sql)) in steps.iter().enumerate() {
        let version = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if done.contains(&version) {
            continue;
        }
        for stmt in statements(sql) {
            match sqlx::raw_sql(AssertSqlSafe(stmt)).execute(&mut *conn).await {
                Ok(_) => {}
                // A concurrent process made this change first (no transactional DDL).
                Err(sqlx::Error::Database(e)) if DB::already_applied(&*e) => {}
                Err(e) => return Err(fail(table, file)(e)),
            }
        }
        if let Some(v) = versions {
            let mut q = QueryBuilder::<DB>::new(format!(
                "INSERT INTO {v} (version, name, applied_at) VALUES ("
            ));
            q.int(i64::from(version));
            q.raw(", ");
            q.text((*file).to_owned());
            q.raw(", ");
            q.text(chrono::Utc::now().to_rfc3339());
            q.raw(")");
            match q.build().execute(&mut *conn).await {
                Ok(_) => {}
                // Another process recorded it first (MySQL migrates without a schema lock,
                // and every step is written to run twice harmlessly).
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
                Err(e) => return Err(fail(table, file)(e)),
            }
        }
    }
    Ok(())
}
