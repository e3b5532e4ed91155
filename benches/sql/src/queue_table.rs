//! The bare loop on the queue's own PostgreSQL table: the table, columns and indexes `SqlQueue`
//! creates, driven by the bare loop's plain statements (no lease fence, no attempt check, no
//! per-row outcomes). It separates what the queue's schema costs from what its statements cost:
//! the gap from the bare loop to this one is the schema's (a message's columns, text ids, the
//! indexes the queue's controls read), the gap from this one to `SqlQueue` is the statements'.
//!
//! Acknowledged rows are deleted, kept in place (marked executed, as the default mode does) or
//! moved to a history table with the same columns, keyed by id and indexed by the time they
//! finished.

use anyhow::{Context, Result};
use mq_core::{MessageQueue, QueueName};
use mq_sql::{PgQueue, SqlOptions};
use sqlx::{AssertSqlSafe, PgPool, Row};

use crate::Rates;
use crate::bare::Ack;
use crate::plain::PlainLoop;

/// The queue table this loop runs on; `{TABLE}_history` is its history table.
const TABLE: &str = "mq_bench_schema";

/// Creates the queue table through `SqlQueue`'s own migrations (and the history table when `ack`
/// moves rows); the loop of plain statements on it, keyed by message id.
async fn create(url: &str, concurrency: usize, ack: Ack) -> Result<PlainLoop<String>> {
    crate::drop_tables(url, TABLE).await?;
    let q = PgQueue::connect(url, SqlOptions::default().table(TABLE).notify(false))
        .await
        .context("postgres queue table")?;
    q.register(&QueueName::new("bench")?).await?;
    q.shutdown().await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(concurrency as u32 + 2)
        .connect(url)
        .await?;
    let ack_sql = match ack {
        Ack::Delete => format!("DELETE FROM {TABLE} WHERE queue = 'bench' AND id = ANY($1)"),
        Ack::Keep => format!(
            "UPDATE {TABLE} SET status = 'executed', lease_expires_at = NULL, updated_at = now() \
             WHERE queue = 'bench' AND id = ANY($1)"
        ),
        Ack::Move => move_statement(&pool).await?,
    };
    let publish = format!(
        "INSERT INTO {TABLE} (queue, id, message_type, payload, status, execute_at, attempts, \
           created_at, updated_at) \
         SELECT 'bench', u.id, 'bench', u.p::jsonb, 'scheduled', now(), 0, now(), now() \
         FROM unnest($1::text[], $2::text[]) AS u(id, p)"
    );
    let claim = format!(
        "UPDATE {TABLE} SET status = 'processing', lease_owner = 'bench', \
           lease_expires_at = now() + interval '30 seconds', attempts = attempts + 1, \
           processing_started_at = now() \
         WHERE ctid = ANY(ARRAY(SELECT ctid FROM {TABLE} WHERE queue = 'bench' AND live = 1 \
           AND status = 'scheduled' AND execute_at <= now() \
           ORDER BY priority DESC, execute_at, seq LIMIT $1 FOR UPDATE SKIP LOCKED)) \
         RETURNING id, payload"
    );
    Ok(PlainLoop::new(pool, publish, claim, ack_sql))
}

/// Creates the history table (plain columns: no identity, no generated column; the key and the
/// age index) and returns the acknowledgement that moves rows there, with the columns a finished
/// row has.
async fn move_statement(pool: &PgPool) -> Result<String> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {TABLE}_history (LIKE {TABLE} INCLUDING DEFAULTS);
         ALTER TABLE {TABLE}_history ADD PRIMARY KEY (queue, id);
         CREATE INDEX {TABLE}_history_done ON {TABLE}_history (updated_at);"
    )))
    .execute(pool)
    .await?;
    let columns: Vec<String> = sqlx::query(
        "SELECT column_name::text AS c FROM information_schema.columns \
         WHERE table_name = $1 AND table_schema = ANY(current_schemas(false)) \
         ORDER BY ordinal_position",
    )
    .bind(format!("{TABLE}_history"))
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| r.try_get("c"))
    .collect::<Result<_, _>>()?;
    let select: Vec<&str> = columns
        .iter()
        .map(|c| match c.as_str() {
            "status" => "'executed'",
            "updated_at" => "now()",
            "lease_expires_at" | "live" => "NULL",
            other => other,
        })
        .collect();
    Ok(format!(
        "WITH d AS (DELETE FROM {TABLE} WHERE queue = 'bench' AND id = ANY($1) RETURNING *) \
         INSERT INTO {TABLE}_history ({}) SELECT {} FROM d",
        columns.join(", "),
        select.join(", ")
    ))
}

/// Publishes, claims and acknowledges the workload on the queue's own table at `url`.
pub(crate) async fn bench_queue_table(
    url: &str,
    workload: (usize, usize, usize),
    ack: Ack,
) -> Result<Rates> {
    let teardown = crate::derived_tables(TABLE)
        .iter()
        .map(|t| format!("DROP TABLE IF EXISTS {t};"))
        .collect();
    create(url, workload.2, ack)
        .await?
        .run(workload, teardown)
        .await
}
