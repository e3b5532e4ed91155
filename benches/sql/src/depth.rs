//! Claim rate against the depth of the table: a queue with `MQ_BENCH_DEPTH` messages waiting,
//! and the same table once they are all completed (kept as history), against a fresh table, in
//! one run. A queue should cost the same to drain whatever waits behind or lies finished in it.

use std::sync::Arc;

use anyhow::{Context, Result};
use mq_bench_report::{Goal, target};
use mq_core::{CommonOptions, MessageQueue, QueueName};
use mq_sql::{PgQueue, SqlOptions};

use crate::workload::{self, Consumed};
use crate::{drop_tables, env_usize};

/// Claim+ack rate of `n` messages on a fresh table, with the depth waiting, and with the depth
/// completed; prints one target line for each ratio to the fresh table.
pub(crate) async fn run(
    url: &str,
    options: impl Fn() -> SqlOptions,
    n: usize,
    batch: usize,
    concurrency: usize,
) -> Result<()> {
    let depth = env_usize("MQ_BENCH_DEPTH", 1_000_000);
    let table = options().get_table().to_owned();
    drop_tables(url, &table).await?;
    let q: Arc<dyn MessageQueue> = Arc::new(
        PgQueue::connect(url, options().common(CommonOptions::default()))
            .await
            .context("postgres")?,
    );
    let name = QueueName::new("bench")?;
    q.register(&name).await?;
    let claim_rate = |c: Consumed| c.handled as f64 / c.took.as_secs_f64();

    workload::publish(&q, &name, (0, n), batch, concurrency).await?;
    let fresh = claim_rate(workload::consume(&q, &name, n, batch, concurrency).await?);

    // `depth` waiting: the measured claims take the oldest `n` of them.
    workload::publish(&q, &name, (n, n + depth), 5000, concurrency).await?;
    let measured = workload::consume(&q, &name, n, batch, concurrency).await?;
    let waiting = claim_rate(measured);

    // Drain the rest (untimed): now the table holds `depth` completed messages.
    let rest = depth.saturating_sub(measured.handled);
    workload::consume(&q, &name, rest, 5000, concurrency).await?;
    // Right after a million messages finished, autovacuum cleans their old row versions while
    // the next claims run: the first measurement shows that moment, the second the history at
    // rest (vacuumed), which is what a table that keeps a million finished rows looks like.
    workload::publish(&q, &name, (n + depth, 2 * n + depth), batch, concurrency).await?;
    let drained = claim_rate(workload::consume(&q, &name, n, batch, concurrency).await?);
    let pool = sqlx::PgPool::connect(url).await.context("postgres")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
        .execute(&pool)
        .await
        .context("vacuum")?;
    pool.close().await;
    workload::publish(
        &q,
        &name,
        (2 * n + depth, 3 * n + depth),
        batch,
        concurrency,
    )
    .await?;
    let history = claim_rate(workload::consume(&q, &name, n, batch, concurrency).await?);
    q.shutdown().await?;
    drop_tables(url, &table).await?;

    println!(
        "postgres claim+ack of {n}: fresh table {fresh:.0} msg/s, {depth} waiting {waiting:.0} msg/s, \
         {depth} completed {history:.0} msg/s (right after they completed, while autovacuum \
         cleans up: {drained:.0} msg/s, {:.2} x)",
        drained / fresh
    );
    target(
        &format!("postgres claim+ack with {depth} waiting / fresh table"),
        waiting / fresh,
        "x",
        Goal::AtLeast(0.8),
    );
    target(
        &format!("postgres claim+ack with {depth} completed / fresh table"),
        history / fresh,
        "x",
        Goal::AtLeast(0.8),
    );
    Ok(())
}
