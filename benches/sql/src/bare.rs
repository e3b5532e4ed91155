//! The practical limit of each database: the benchmark's workload as plain sqlx statements on a
//! narrow table with one index (insert in batches; claim a batch with `SKIP LOCKED` where the
//! database has it; acknowledge by `DELETE`), so `SqlQueue` is measured against what the same
//! database does with nothing but a queue's core.
//!
//! The same loop can also keep its rows, in two ways: [`Ack::Keep`] marks a row done in place and
//! a second index finds done rows by age, as retention needs; [`Ack::Move`] moves it to a history
//! table with the same index, out of the table claims read. They show what keeping acknowledged
//! rows costs by itself, before anything else a queue does (fencing, a message's columns), so
//! the default mode's ratio can be read against them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::{MySqlPool, PgPool, QueryBuilder, SqlitePool};

use crate::cpu::CpuTime;
use crate::{Rates, cpu_per_message, rate};

/// How a bare loop acknowledges a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ack {
    /// Deletes it.
    Delete,
    /// Marks it done and keeps it, with an index on the time it finished.
    Keep,
    /// Deletes it and inserts it into a history table, with an index on the time it finished,
    /// in one transaction.
    Move,
}

/// A connection pool to the database a bare loop runs on.
#[derive(Clone)]
enum Bare {
    Postgres(PgPool),
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

impl Bare {
    async fn connect(url: &str, concurrency: usize) -> Result<Self> {
        let max = concurrency as u32 + 2;
        Ok(if url.starts_with("postgres") {
            Bare::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(max)
                    .connect(url)
                    .await?,
            )
        } else if url.starts_with("mysql") {
            // As `MySqlQueue` does: no gap locks, which make locking reads deadlock with
            // the inserts and deletes around them.
            Bare::MySql(
                sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(max)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::Executor::execute(
                                conn,
                                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?,
            )
        } else {
            // As `SqliteQueue` opens its file: WAL, normal sync, writers wait for the lock.
            let opts = url
                .parse::<sqlx::sqlite::SqliteConnectOptions>()?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30));
            Bare::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(max)
                    .connect_with(opts)
                    .await?,
            )
        })
    }

    async fn create(&self) -> Result<()> {
        self.script(
            "DROP TABLE IF EXISTS mq_bench_bare; DROP TABLE IF EXISTS mq_bench_bare_history;
                     CREATE TABLE mq_bench_bare (id bigserial PRIMARY KEY, queue text NOT NULL, payload jsonb NOT NULL,
                       status text NOT NULL DEFAULT 'ready', execute_at timestamptz NOT NULL DEFAULT now(), lease_expires_at timestamptz)
                       WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 20000, autovacuum_vacuum_cost_delay = 0);
                     CREATE INDEX mq_bench_bare_ready ON mq_bench_bare (queue, execute_at, id) WHERE status = 'ready';",
            "DROP TABLE IF EXISTS mq_bench_bare; DROP TABLE IF EXISTS mq_bench_bare_history;
                     CREATE TABLE mq_bench_bare (id BIGINT AUTO_INCREMENT PRIMARY KEY, queue VARCHAR(255) NOT NULL,
                       payload JSON NOT NULL, status VARCHAR(16) NOT NULL DEFAULT 'ready',
                       execute_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), lease_expires_at DATETIME(6) NULL,
                       KEY mq_bench_bare_ready (queue, status, execute_at, id)) ENGINE = InnoDB;",
            "DROP TABLE IF EXISTS mq_bench_bare; DROP TABLE IF EXISTS mq_bench_bare_history;
                     CREATE TABLE mq_bench_bare (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, payload TEXT NOT NULL,
                       status TEXT NOT NULL DEFAULT 'ready', execute_at INTEGER NOT NULL DEFAULT (unixepoch('subsec') * 1000000),
                       lease_expires_at INTEGER);
                     CREATE INDEX mq_bench_bare_ready ON mq_bench_bare (queue, execute_at, id) WHERE status = 'ready';",
        )
        .await
    }

    /// Adds what the loop that keeps its rows needs: the time a row was done, and the index
    /// retention would read to find done rows by age.
    async fn keep_rows(&self) -> Result<()> {
        self.script(
            "ALTER TABLE mq_bench_bare ADD COLUMN done_at timestamptz;
                     CREATE INDEX mq_bench_bare_done ON mq_bench_bare (done_at) WHERE status = 'done';",
            "ALTER TABLE mq_bench_bare ADD COLUMN done_at DATETIME(6) NULL,
                       ADD KEY mq_bench_bare_done (status, done_at);",
            "ALTER TABLE mq_bench_bare ADD COLUMN done_at INTEGER;
                     CREATE INDEX mq_bench_bare_done ON mq_bench_bare (done_at) WHERE status = 'done';",
        )
        .await
    }

    /// Adds the history table the moving loop writes to, with its index by age.
    async fn history(&self) -> Result<()> {
        self.script(
            "CREATE TABLE mq_bench_bare_history (id bigint PRIMARY KEY, queue text NOT NULL,
                       payload jsonb NOT NULL, done_at timestamptz NOT NULL);
                     CREATE INDEX mq_bench_bare_history_done ON mq_bench_bare_history (done_at);",
            "CREATE TABLE mq_bench_bare_history (id BIGINT PRIMARY KEY, queue VARCHAR(255) NOT NULL,
                       payload JSON NOT NULL, done_at DATETIME(6) NOT NULL,
                       KEY mq_bench_bare_history_done (done_at)) ENGINE = InnoDB;",
            "CREATE TABLE mq_bench_bare_history (id INTEGER PRIMARY KEY, queue TEXT NOT NULL,
                       payload TEXT NOT NULL, done_at INTEGER NOT NULL);
                     CREATE INDEX mq_bench_bare_history_done ON mq_bench_bare_history (done_at);",
        )
        .await
    }

    async fn publish(&self, payloads: &[String]) -> Result<()> {
        match self {
            Bare::Postgres(pool) => {
                sqlx::query("INSERT INTO mq_bench_bare (queue, payload) SELECT 'bench', p::jsonb FROM unnest($1::text[]) AS p")
                    .bind(payloads)
                    .execute(pool)
                    .await?;
            }
            Bare::MySql(pool) => {
                values(payloads).build().execute(pool).await?;
            }
            Bare::Sqlite(pool) => {
                values(payloads).build().execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Claims up to `batch` ready rows and acknowledges them; how many it took.
    async fn claim_and_ack(&self, batch: usize, ack: Ack) -> Result<usize> {
        let ids = self.claim(i64::try_from(batch)?).await?;
        if !ids.is_empty() {
            match ack {
                Ack::Delete => self.delete(&ids).await?,
                Ack::Keep => self.mark_done(&ids).await?,
                Ack::Move => self.move_to_history(&ids).await?,
            }
        }
        Ok(ids.len())
    }

    /// Marks up to `limit` ready rows processing, with a lease; their ids.
    async fn claim(&self, limit: i64) -> Result<Vec<i64>> {
        let ids = match self {
            Bare::Postgres(pool) => {
                let rows: Vec<(i64, sqlx::types::Json<serde_json::Value>)> = sqlx::query_as(
                    "UPDATE mq_bench_bare SET status = 'processing', lease_expires_at = now() + interval '30 seconds'
                     WHERE id IN (SELECT id FROM mq_bench_bare WHERE queue = 'bench' AND status = 'ready' AND execute_at <= now()
                                  ORDER BY execute_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
                     RETURNING id, payload",
                )
                .bind(limit)
                .fetch_all(pool)
                .await?;
                rows.iter().map(|r| r.0).collect()
            }
            // No UPDATE ... RETURNING: lock the batch, mark it, commit. Should InnoDB still
            // pick the claim as a deadlock victim, it is tried again.
            Bare::MySql(pool) => loop {
                match claim_mysql(pool, limit).await {
                    Err(e) if is_deadlock(&e) => continue,
                    other => break other?,
                }
            },
            Bare::Sqlite(pool) => {
                // One writer at a time: the claim is one statement under the write lock.
                let rows: Vec<(i64, String)> = sqlx::query_as(
                    "UPDATE mq_bench_bare SET status = 'processing',
                       lease_expires_at = unixepoch('subsec') * 1000000 + 30000000
                     WHERE id IN (SELECT id FROM mq_bench_bare WHERE queue = 'bench' AND status = 'ready'
                       AND execute_at <= unixepoch('subsec') * 1000000 ORDER BY execute_at, id LIMIT ?)
                     RETURNING id, payload",
                )
                .bind(limit)
                .fetch_all(pool)
                .await?;
                rows.iter().map(|r| r.0).collect()
            }
        };
        Ok(ids)
    }

    /// Deletes the rows `ids` (the acknowledgement).
    async fn delete(&self, ids: &[i64]) -> Result<()> {
        let sql = "DELETE FROM mq_bench_bare WHERE id ";
        self.by_ids(sql, sql, sql, ids).await
    }

    /// Marks the rows `ids` done (the acknowledgement that keeps them).
    async fn mark_done(&self, ids: &[i64]) -> Result<()> {
        self.by_ids(
            "UPDATE mq_bench_bare SET status = 'done', lease_expires_at = NULL, done_at = now() WHERE id ",
            "UPDATE mq_bench_bare SET status = 'done', lease_expires_at = NULL, \
             done_at = CURRENT_TIMESTAMP(6) WHERE id ",
            "UPDATE mq_bench_bare SET status = 'done', lease_expires_at = NULL, \
             done_at = unixepoch('subsec') * 1000000 WHERE id ",
            ids,
        )
        .await
    }

    /// Runs the statement written for this database (each ends `... WHERE id `) on the rows
    /// `ids`: PostgreSQL binds them as one array, the others as a list. A MySQL deadlock
    /// victim is tried again, as for the claim.
    async fn by_ids(
        &self,
        postgres: &'static str,
        mysql: &'static str,
        sqlite: &'static str,
        ids: &[i64],
    ) -> Result<()> {
        match self {
            Bare::Postgres(pool) => {
                let sql = format!("{postgres}= ANY($1)");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(ids)
                    .execute(pool)
                    .await?;
            }
            Bare::MySql(pool) => loop {
                let mut q = QueryBuilder::new(format!("{mysql}IN "));
                in_list(&mut q, ids);
                match q.build().execute(pool).await {
                    Err(e) if is_deadlock(&e) => continue,
                    other => {
                        other?;
                        break;
                    }
                }
            },
            Bare::Sqlite(pool) => {
                let mut q = QueryBuilder::new(format!("{sqlite}IN "));
                in_list(&mut q, ids);
                q.build().execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Moves the rows `ids` to the history table (the acknowledgement that keeps them elsewhere).
    async fn move_to_history(&self, ids: &[i64]) -> Result<()> {
        match self {
            Bare::Postgres(pool) => {
                sqlx::query(
                    "WITH d AS (DELETE FROM mq_bench_bare WHERE id = ANY($1) RETURNING id, queue, payload) \
                     INSERT INTO mq_bench_bare_history (id, queue, payload, done_at) \
                     SELECT id, queue, payload, now() FROM d",
                )
                .bind(ids)
                .execute(pool)
                .await?;
            }
            // No DELETE ... RETURNING to insert from: copy, then delete, in one transaction.
            Bare::MySql(pool) => loop {
                match move_mysql(pool, ids).await {
                    Err(e) if is_deadlock(&e) => continue,
                    other => break other?,
                }
            },
            Bare::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let mut q = QueryBuilder::new(
                    "INSERT INTO mq_bench_bare_history (id, queue, payload, done_at) \
                     SELECT id, queue, payload, unixepoch('subsec') * 1000000 FROM mq_bench_bare WHERE id IN ",
                );
                in_list(&mut q, ids);
                q.build().execute(&mut *tx).await?;
                let mut q = QueryBuilder::new("DELETE FROM mq_bench_bare WHERE id IN ");
                in_list(&mut q, ids);
                q.build().execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    async fn drop_table(&self) -> Result<()> {
        let sql = "DROP TABLE IF EXISTS mq_bench_bare; DROP TABLE IF EXISTS mq_bench_bare_history";
        self.script(sql, sql, sql).await
    }

    /// Runs the statements written for this database.
    async fn script(
        &self,
        postgres: &'static str,
        mysql: &'static str,
        sqlite: &'static str,
    ) -> Result<()> {
        match self {
            Bare::Postgres(pool) => {
                sqlx::raw_sql(postgres).execute(pool).await?;
            }
            Bare::MySql(pool) => {
                sqlx::raw_sql(mysql).execute(pool).await?;
            }
            Bare::Sqlite(pool) => {
                sqlx::raw_sql(sqlite).execute(pool).await?;
            }
        }
        Ok(())
    }
}

/// Claims up to `limit` ready rows on MySQL in one transaction; their ids.
async fn claim_mysql(pool: &MySqlPool, limit: i64) -> Result<Vec<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(i64, sqlx::types::Json<serde_json::Value>)> = sqlx::query_as(
        "SELECT id, payload FROM mq_bench_bare WHERE queue = 'bench' AND status = 'ready'
           AND execute_at <= CURRENT_TIMESTAMP(6) ORDER BY execute_at, id LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    if !ids.is_empty() {
        let mut q = QueryBuilder::new(
            "UPDATE mq_bench_bare SET status = 'processing', \
             lease_expires_at = CURRENT_TIMESTAMP(6) + INTERVAL 30 SECOND WHERE id IN ",
        );
        in_list(&mut q, &ids);
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(ids)
}

/// Moves the rows `ids` to the history table on MySQL in one transaction.
async fn move_mysql(pool: &MySqlPool, ids: &[i64]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut q = QueryBuilder::new(
        "INSERT INTO mq_bench_bare_history (id, queue, payload, done_at) \
         SELECT id, queue, payload, CURRENT_TIMESTAMP(6) FROM mq_bench_bare WHERE id IN ",
    );
    in_list(&mut q, ids);
    q.build().execute(&mut *tx).await?;
    let mut q = QueryBuilder::new("DELETE FROM mq_bench_bare WHERE id IN ");
    in_list(&mut q, ids);
    q.build().execute(&mut *tx).await?;
    tx.commit().await
}

/// Whether `e` is a deadlock the database rolled back: the statement may run again.
fn is_deadlock(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "40001")
}

/// A multi-row insert of `payloads` (MySQL and SQLite bind each row).
fn values<DB: sqlx::Database>(payloads: &[String]) -> QueryBuilder<DB>
where
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut q = QueryBuilder::new("INSERT INTO mq_bench_bare (queue, payload) ");
    q.push_values(payloads, |mut row, p| {
        row.push("'bench'").push_bind(p.clone());
    });
    q
}

/// ` (id, id, ...)` with each id bound.
fn in_list<DB: sqlx::Database>(q: &mut QueryBuilder<DB>, ids: &[i64])
where
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.push("(");
    let mut list = q.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    q.push(")");
}

/// A loop the benchmark drives: publish a chunk of payloads; claim a batch and acknowledge it.
pub(crate) trait Loop: Clone + Send + Sync + 'static {
    /// Stores one chunk of payloads as ready rows.
    fn publish(&self, payloads: &[String]) -> impl Future<Output = Result<()>> + Send;
    /// Claims up to `batch` ready rows and acknowledges them; how many it took.
    fn claim_and_ack(&self, batch: usize) -> impl Future<Output = Result<usize>> + Send;
}

/// The bare table of one database, acknowledged one way.
#[derive(Clone)]
struct BareLoop(Bare, Ack);

impl Loop for BareLoop {
    async fn publish(&self, payloads: &[String]) -> Result<()> {
        self.0.publish(payloads).await
    }
    async fn claim_and_ack(&self, batch: usize) -> Result<usize> {
        self.0.claim_and_ack(batch, self.1).await
    }
}

/// Publishes `n` messages in chunks of `batch` from `concurrency` tasks, then claims and
/// acknowledges them all with `concurrency` loops, on the bare table of the database at `url`.
pub(crate) async fn bench_bare(
    url: &str,
    workload: (usize, usize, usize),
    ack: Ack,
) -> Result<Rates> {
    let (_, _, concurrency) = workload;
    let bare = Bare::connect(url, concurrency).await?;
    bare.create().await?;
    match ack {
        Ack::Delete => {}
        Ack::Keep => bare.keep_rows().await?,
        Ack::Move => bare.history().await?,
    }
    let rates = drive(BareLoop(bare.clone(), ack), workload).await?;
    bare.drop_table().await?;
    Ok(rates)
}

/// Publishes `n` messages in chunks of `batch` through `l` from `concurrency` tasks, then
/// claims and acknowledges them all with `concurrency` loops.
pub(crate) async fn drive<L: Loop>(
    l: L,
    (n, batch, concurrency): (usize, usize, usize),
) -> Result<Rates> {
    let started = Instant::now();
    let chunks: Vec<Vec<String>> = (0..n)
        .map(|i| crate::workload::payload(i).to_string())
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(<[String]>::to_vec)
        .collect();
    let chunks = Arc::new(chunks);
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (l, chunks, next) = (l.clone(), chunks.clone(), next.clone());
        set.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(chunk) = chunks.get(k) else {
                    return Ok::<(), anyhow::Error>(());
                };
                l.publish(chunk).await?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let published = started.elapsed();
    let consume_started = Instant::now();
    let cpu_started = CpuTime::now();
    let done = Arc::new(AtomicUsize::new(0));
    for _ in 0..concurrency {
        let (l, done) = (l.clone(), done.clone());
        set.spawn(async move {
            loop {
                let took = l.claim_and_ack(batch).await?;
                if took == 0 {
                    if done.load(Ordering::Relaxed) >= n {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                done.fetch_add(took, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let consumed = consume_started.elapsed();
    let cpu = CpuTime::now().since(cpu_started);
    Ok(Rates {
        publish: rate(n, published),
        consume: rate(n, consumed),
        end_to_end: rate(n, published + consumed),
        consume_cpu_us: cpu_per_message(cpu, n),
    })
}
