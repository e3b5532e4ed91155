//! apalis's PostgreSQL backend (`apalis-postgres`, in its own `apalis` schema) on the benchmark's
//! workload: the job queue users coming from apalis compare against.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use apalis::prelude::{BoxDynError, Data, TaskSink, WorkerBuilder, WorkerBuilderExt};
use apalis_postgres::{Config as ApalisConfig, PostgresStorage};
use sqlx::{AssertSqlSafe, PgPool};

use crate::cpu::CpuTime;
use crate::{Rates, cpu_per_message, rate};

/// The apalis job: count and succeed (the same no-op work as the `SqlQueue` handler).
async fn apalis_count(
    _job: serde_json::Value,
    seen: Data<Arc<AtomicUsize>>,
) -> Result<(), BoxDynError> {
    seen.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Whether the PostgreSQL extensions apalis's migrations install were already there before it
/// ran, so that cleanup removes only what the benchmark added.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ApalisSetup {
    had_hstore: bool,
    had_pgcrypto: bool,
}

/// Runs apalis's own migrations (schema `apalis`, history in `apalis._sqlx_migrations`).
pub(crate) async fn apalis_setup(url: &str) -> Result<ApalisSetup> {
    let pool = PgPool::connect(url).await?;
    let has = |name: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = $1)",
            )
            .bind(name)
            .fetch_one(&pool)
            .await
        }
    };
    let setup = ApalisSetup {
        had_hstore: has("hstore").await?,
        had_pgcrypto: has("pgcrypto").await?,
    };
    PostgresStorage::setup(&pool)
        .await
        .context("apalis-postgres migrations")?;
    pool.close().await;
    Ok(setup)
}

/// Drops apalis's schema (jobs, workers, functions, migration history) and the extensions its
/// migrations installed, unless they were there before.
pub(crate) async fn apalis_teardown(url: &str, setup: ApalisSetup) -> Result<()> {
    let pool = PgPool::connect(url).await?;
    sqlx::query("DROP SCHEMA IF EXISTS apalis CASCADE")
        .execute(&pool)
        .await?;
    for (had, ext) in [
        (setup.had_hstore, "hstore"),
        (setup.had_pgcrypto, "pgcrypto"),
    ] {
        if !had {
            // RESTRICT: if anything else started using it meanwhile, leave it.
            let _ = sqlx::query(AssertSqlSafe(format!("DROP EXTENSION IF EXISTS {ext}")))
                .execute(&pool)
                .await;
        }
    }
    pool.close().await;
    Ok(())
}

/// apalis's PostgreSQL backend on the same workload: `push_bulk` in batches of `batch` from
/// `concurrency` pushers (one multi-row insert each), then one apalis worker with
/// `.concurrency(concurrency)` fetching `batch` jobs at a time until every job has run.
pub(crate) async fn bench_apalis_pg(
    url: &str,
    round: usize,
    n: usize,
    batch: usize,
    concurrency: usize,
) -> Result<Rates> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(concurrency as u32 + 2)
        .connect(url)
        .await?;
    sqlx::query("TRUNCATE apalis.jobs, apalis.workers")
        .execute(&pool)
        .await?;
    let config = ApalisConfig::default().queue("mq_bench").batch_size(batch);
    let storage: PostgresStorage<serde_json::Value> =
        PostgresStorage::new(&pool).with_config(config);

    let started = Instant::now();
    let chunks: Vec<Vec<serde_json::Value>> = (0..n)
        .map(|i| serde_json::json!({"i": i, "body": "0123456789abcdef0123456789abcdef"}))
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(<[serde_json::Value]>::to_vec)
        .collect();
    let chunks = Arc::new(chunks);
    let next = Arc::new(AtomicUsize::new(0));
    let mut pushers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (mut storage, chunks, next) = (storage.clone(), chunks.clone(), next.clone());
        pushers.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(chunk) = chunks.get(k) else {
                    return Ok::<(), anyhow::Error>(());
                };
                storage
                    .push_bulk(chunk.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("apalis push_bulk: {e}"))?;
            }
        });
    }
    while let Some(r) = pushers.join_next().await {
        r??;
    }
    let published = started.elapsed();

    let seen = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let worker = WorkerBuilder::new(format!("mq-bench-apalis-{round}"))
        .backend(storage)
        .data(seen.clone())
        .concurrency(concurrency)
        .build(apalis_count);
    let consume_started = Instant::now();
    let cpu_started = CpuTime::now();
    let stopper = stop.clone();
    let running = tokio::spawn(worker.run_with_ctx(move |ctx| {
        let stopper = stopper.clone();
        async move {
            stopper.notified().await;
            ctx.stop()
        }
    }));
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen.load(Ordering::Relaxed) < n {
        if running.is_finished() || Instant::now() >= deadline {
            stop.notify_one();
            let outcome = running.await;
            anyhow::bail!(
                "apalis worker stalled at {} of {n}: {outcome:?}",
                seen.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let consumed = consume_started.elapsed();
    let cpu = CpuTime::now().since(cpu_started);
    stop.notify_one();
    tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .context("apalis worker did not stop")??
        .map_err(|e| anyhow::anyhow!("apalis worker: {e}"))?;
    // Every job must have run exactly once and been recorded as done by apalis.
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
        .fetch_one(&pool)
        .await?;
    let ran = seen.load(Ordering::Relaxed);
    if ran != n || done != n as i64 {
        eprintln!("apalis round {round}: {ran} runs, {done} rows Done, expected {n}");
    }
    sqlx::query("TRUNCATE apalis.jobs, apalis.workers")
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(Rates {
        publish: rate(n, published),
        consume: rate(n, consumed),
        end_to_end: rate(n, published + consumed),
        consume_cpu_us: cpu_per_message(cpu, n),
    })
}
