//! Queue numbers: counts per status, the oldest ready message's age and the expired leases,
//! either of every message (`queue_stats`) or of the waiting and running ones only
//! (`queue_depth`, which the indexes of waiting and running messages answer without reading
//! finished rows).

use std::time::Duration;

use mq_core::{QueueName, QueueStats, Status};
use sqlx::{Executor, QueryBuilder};

use crate::SqlStore;
use crate::dialect::{Dialect, ReadRow, Sql};
use crate::error::backend;
use crate::migrate;
use crate::options::SqlOptions;

impl<DB: Dialect> SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    /// The numbers of `queue` (or of every queue when `None`) in the table `options` names,
    /// read as the table is: nothing is created, migrated or checked beyond the table's
    /// existence, and no background task starts. The columns read exist since the first
    /// schema version, so a monitoring tool can read a table whose schema is behind this
    /// version's migrations (workers not yet upgraded), which
    /// [`from_pool`](Self::from_pool) under `create_schema(false)` refuses.
    ///
    /// # Errors
    ///
    /// [`mq_core::Error::InvalidName`] for a bad table name; [`mq_core::Error::Backend`] when
    /// the table does not exist ([`Error::MissingTable`](crate::Error::MissingTable) as the
    /// source) or cannot be read.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mq_sql::{SqlOptions, SqlStore};
    ///
    /// # async fn f(pool: sqlx::PgPool) -> mq_core::Result<()> {
    /// let stats = SqlStore::read_queue_stats(pool, &SqlOptions::default(), None).await?;
    /// for s in stats {
    ///     println!("{}: {} waiting", s.queue, s.count(mq_core::Status::Scheduled));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn read_queue_stats(
        pool: sqlx::Pool<DB>,
        options: &SqlOptions,
        queue: Option<&QueueName>,
    ) -> mq_core::Result<Vec<QueueStats>> {
        options.validate()?;
        let store = SqlStore::build(pool, options.clone());
        migrate::require_table(&store.pool, &store.names.table).await?;
        queue_stats(&store.pool, &store.names.table, queue, false).await
    }
}

/// The numbers of `queue` (every queue when `None`) in `table`; with `live`, only the
/// scheduled and processing messages, one index-backed query per status, so the cost follows
/// the queue's depth and not the number of finished rows kept.
pub(crate) async fn queue_stats<DB: Dialect>(
    pool: &sqlx::Pool<DB>,
    table: &str,
    queue: Option<&QueueName>,
    live: bool,
) -> mq_core::Result<Vec<QueueStats>>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    let now = DB::stats_now();
    let mut q = QueryBuilder::<DB>::new("");
    let filter = |q: &mut QueryBuilder<DB>| {
        if let Some(queue) = queue {
            q.raw(" AND queue = ");
            q.text(queue.as_str().to_owned());
        }
    };
    if live {
        // Each half names its status, so each is answered by its partial index (PostgreSQL,
        // SQLite) or by the status-led index (MySQL).
        let oldest = format!("MIN(CASE WHEN execute_at <= {now} THEN execute_at END)");
        q.raw(&format!(
            "SELECT queue, 'scheduled' AS status, COUNT(*) AS n, {age} AS oldest_ms, \
             0 AS expired FROM {table} WHERE status = 'scheduled'{live}",
            age = DB::age_ms(&oldest, &now),
            live = DB::LIVE_ROWS,
        ));
        filter(&mut q);
        q.raw(&format!(
            " GROUP BY queue UNION ALL SELECT queue, 'processing' AS status, COUNT(*) AS n, \
             NULL AS oldest_ms, COUNT(CASE WHEN lease_expires_at < {now} THEN 1 END) AS expired \
             FROM {table} WHERE status = 'processing'{live}",
            live = DB::LIVE_ROWS,
        ));
        filter(&mut q);
        q.raw(" GROUP BY queue");
    } else {
        let oldest = format!(
            "MIN(CASE WHEN status = 'scheduled' AND execute_at <= {now} THEN execute_at END)"
        );
        q.raw(&format!(
            "SELECT queue, status, COUNT(*) AS n, {age} AS oldest_ms, \
             COUNT(CASE WHEN status = 'processing' AND lease_expires_at < {now} THEN 1 END) AS expired \
             FROM {table} WHERE 1 = 1",
            age = DB::age_ms(&oldest, &now),
        ));
        filter(&mut q);
        q.raw(" GROUP BY queue, status");
    }
    let rows = q
        .build()
        .fetch_all(pool)
        .await
        .map_err(backend("queue stats"))?;
    let rows = rows
        .iter()
        .map(stats_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend("queue stats"))?;
    fold_stats(rows)
}

/// One `(queue, status)` group read by [`queue_stats`].
struct StatsRow {
    queue: String,
    status: String,
    n: i64,
    oldest_ms: Option<i64>,
    expired: i64,
}

/// Folds [`StatsRow`]s into one [`QueueStats`] per queue, in queue-name order.
fn fold_stats(rows: Vec<StatsRow>) -> mq_core::Result<Vec<QueueStats>> {
    let mut by_queue: std::collections::BTreeMap<String, QueueStats> =
        std::collections::BTreeMap::new();
    for row in rows {
        let status: Status = row.status.parse().map_err(|_| {
            mq_core::Error::backend(
                "sql",
                "queue stats",
                format!("unknown status {:?} in queue {:?}", row.status, row.queue),
            )
        })?;
        let stats = match by_queue.entry(row.queue) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let name = QueueName::new(e.key())?;
                e.insert(QueueStats::new(name))
            }
        };
        *stats.counts.entry(status).or_default() += u64::try_from(row.n).unwrap_or(0);
        stats.expired_leases += u64::try_from(row.expired).unwrap_or(0);
        if let Some(ms) = row.oldest_ms {
            let age = Duration::from_millis(u64::try_from(ms).unwrap_or(0));
            stats.oldest_ready_age = Some(stats.oldest_ready_age.map_or(age, |a| a.max(age)));
        }
    }
    Ok(by_queue.into_values().collect())
}

/// Reads one row of [`queue_stats`].
fn stats_row(row: &impl ReadRow) -> Result<StatsRow, sqlx::Error> {
    Ok(StatsRow {
        queue: row.opt_text("queue")?.unwrap_or_default(),
        status: row.opt_text("status")?.unwrap_or_default(),
        n: row.int("n")?,
        oldest_ms: row.opt_int("oldest_ms")?,
        expired: row.int("expired")?,
    })
}
