//! Throughput of the SQL queue: publish in batches, then claim + ack through `SqlQueue` (on
//! PostgreSQL both with the default, which keeps acknowledged rows, and with
//! `SqlOptions::delete_on_ack`), and on
//! PostgreSQL the same workload through (a) a bare sqlx `SKIP LOCKED` claim/delete loop (the
//! practical limit) and (b) apalis's PostgreSQL backend (`apalis-postgres`, in its own `apalis`
//! schema), interleaved round by round; the best round of each counts.
//!
//! ```text
//! MQ_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//! MQ_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test \
//! cargo run --release -p mq-bench-sql
//! ```
//!
//! Environment: `MQ_BENCH_MESSAGES` (100000), `MQ_BENCH_BATCH` (500), `MQ_BENCH_CONCURRENCY` (4),
//! `MQ_BENCH_DATABASES` (`postgres,mysql,sqlite`), `MQ_BENCH_ROUNDS` (2, PostgreSQL only),
//! `MQ_BENCH_APALIS` (`1`; `0` skips apalis), `MQ_BENCH_DEPTH` (1000000 rows waiting, then in
//! history, beside the measured messages; `0` skips that part). A database whose URL is not set
//! is skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use apalis::prelude::{BoxDynError, Data, TaskSink, WorkerBuilder, WorkerBuilderExt};
use apalis_postgres::{Config as ApalisConfig, PostgresStorage};
use mq_bench_report::{Goal, target};
use mq_core::{CommonOptions, MessageQueue, QueueName};
use mq_sql::{MySqlQueue, PgQueue, SqlOptions, SqliteQueue};
use sqlx::{AssertSqlSafe, PgPool};

mod cpu;
mod depth;
mod workload;
use cpu::CpuTime;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
struct Rates {
    publish: f64,
    consume: f64,
    end_to_end: f64,
    /// CPU time per message of the claim+ack phase, in microseconds: (this process, server).
    consume_cpu_us: (f64, f64),
}

/// CPU microseconds per message over `n` messages: (client, server).
fn cpu_per_message(used: CpuTime, n: usize) -> (f64, f64) {
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    (per(used.client), per(used.server))
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Publishes `n` messages, then claims and acknowledges them all, through `q`.
async fn bench_queue(
    q: Arc<dyn MessageQueue>,
    n: usize,
    batch: usize,
    concurrency: usize,
) -> Result<Rates> {
    let name = QueueName::new("bench")?;
    q.register(&name).await?;
    let published = workload::publish(&q, &name, (0, n), batch, concurrency).await?;
    let consumed = workload::consume(&q, &name, n, batch, concurrency).await?;
    q.shutdown().await?;
    Ok(Rates {
        publish: rate(n, published),
        consume: rate(n, consumed.took),
        end_to_end: rate(n, published + consumed.took),
        consume_cpu_us: cpu_per_message(consumed.cpu, n),
    })
}

/// The practical limit: the same workload as plain sqlx statements (unnest insert; claim by
/// `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`; ack by `DELETE`).
async fn bench_bare_pg(url: &str, n: usize, batch: usize, concurrency: usize) -> Result<Rates> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(concurrency as u32 + 2)
        .connect(url)
        .await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS mq_bench_bare;
         CREATE TABLE mq_bench_bare (id bigserial PRIMARY KEY, queue text NOT NULL, payload jsonb NOT NULL,
           status text NOT NULL DEFAULT 'ready', execute_at timestamptz NOT NULL DEFAULT now(), lease_expires_at timestamptz)
           WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 20000, autovacuum_vacuum_cost_delay = 0);
         CREATE INDEX mq_bench_bare_ready ON mq_bench_bare (queue, execute_at, id) WHERE status = 'ready';",
    )
    .execute(&pool)
    .await?;
    let started = Instant::now();
    let chunks: Vec<Vec<String>> = (0..n)
        .map(|i| {
            serde_json::json!({"i": i, "body": "0123456789abcdef0123456789abcdef"}).to_string()
        })
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(<[String]>::to_vec)
        .collect();
    let chunks = Arc::new(chunks);
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (pool, chunks, next) = (pool.clone(), chunks.clone(), next.clone());
        set.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(chunk) = chunks.get(k) else { return Ok::<(), anyhow::Error>(()) };
                sqlx::query("INSERT INTO mq_bench_bare (queue, payload) SELECT 'bench', p::jsonb FROM unnest($1::text[]) AS p")
                    .bind(chunk)
                    .execute(&pool)
                    .await?;
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
        let (pool, done) = (pool.clone(), done.clone());
        set.spawn(async move {
            loop {
                let rows: Vec<(i64, sqlx::types::Json<serde_json::Value>)> = sqlx::query_as(
                    "UPDATE mq_bench_bare SET status = 'processing', lease_expires_at = now() + interval '30 seconds'
                     WHERE id IN (SELECT id FROM mq_bench_bare WHERE queue = 'bench' AND status = 'ready' AND execute_at <= now()
                                  ORDER BY execute_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
                     RETURNING id, payload",
                )
                .bind(batch as i64)
                .fetch_all(&pool)
                .await?;
                if rows.is_empty() {
                    if done.load(Ordering::Relaxed) >= n {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
                sqlx::query("DELETE FROM mq_bench_bare WHERE id = ANY($1)").bind(&ids).execute(&pool).await?;
                done.fetch_add(ids.len(), Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let consumed = consume_started.elapsed();
    let cpu = CpuTime::now().since(cpu_started);
    sqlx::query("DROP TABLE IF EXISTS mq_bench_bare")
        .execute(&pool)
        .await?;
    Ok(Rates {
        publish: rate(n, published),
        consume: rate(n, consumed),
        end_to_end: rate(n, published + consumed),
        consume_cpu_us: cpu_per_message(cpu, n),
    })
}

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
struct ApalisSetup {
    had_hstore: bool,
    had_pgcrypto: bool,
}

/// Runs apalis's own migrations (schema `apalis`, history in `apalis._sqlx_migrations`).
async fn apalis_setup(url: &str) -> Result<ApalisSetup> {
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
async fn apalis_teardown(url: &str, setup: ApalisSetup) -> Result<()> {
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
async fn bench_apalis_pg(
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

/// Drops the queue table and every table derived from its name.
async fn drop_tables(url: &str, table: &str) -> Result<()> {
    if url.starts_with("postgres") {
        let pool = PgPool::connect(url).await?;
        for t in derived_tables(table) {
            sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                .execute(&pool)
                .await?;
        }
    } else if url.starts_with("mysql") {
        let pool = sqlx::MySqlPool::connect(url).await?;
        for t in derived_tables(table) {
            sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                .execute(&pool)
                .await?;
        }
    }
    Ok(())
}

/// The queue table and the tables named after it.
fn derived_tables(table: &str) -> Vec<String> {
    let mut all = vec![table.to_owned()];
    all.extend(["archive", "versions", "ids", "history", "paused"].map(|s| format!("{table}_{s}")));
    all
}

fn best(a: Option<Rates>, b: Rates) -> Rates {
    match a {
        None => b,
        Some(a) => Rates {
            publish: a.publish.max(b.publish),
            consume: a.consume.max(b.consume),
            end_to_end: a.end_to_end.max(b.end_to_end),
            // The CPU cost of the round with the best claim+ack rate.
            consume_cpu_us: if b.consume > a.consume {
                b.consume_cpu_us
            } else {
                a.consume_cpu_us
            },
        },
    }
}

fn print(label: &str, r: &Rates) {
    println!(
        "{label:<40} publish {:>9.0} msg/s   claim+ack {:>9.0} msg/s   end-to-end {:>9.0} msg/s   \
         claim+ack CPU per message: client {:>5.1} us, server {:>5.1} us",
        r.publish, r.consume, r.end_to_end, r.consume_cpu_us.0, r.consume_cpu_us.1
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let n = env_usize("MQ_BENCH_MESSAGES", 100_000);
    let batch = env_usize("MQ_BENCH_BATCH", 500);
    let concurrency = env_usize("MQ_BENCH_CONCURRENCY", 4);
    let dbs =
        std::env::var("MQ_BENCH_DATABASES").unwrap_or_else(|_| "postgres,mysql,sqlite".into());
    println!("mq-sql bench: {n} messages, batch {batch}, concurrency {concurrency}");
    let table = "mq_bench";
    let options = || {
        SqlOptions::default()
            .table(table)
            .max_connections(concurrency as u32 * 2 + 2)
    };

    // An apalis failure is reported at the end, after the other databases ran.
    let mut failed: Option<anyhow::Error> = None;
    if dbs.contains("postgres") {
        match std::env::var("MQ_TEST_POSTGRES_URL") {
            Ok(url) => {
                // Interleave the contenders round by round (the machine is shared: the best
                // round of each counts).
                let rounds = env_usize("MQ_BENCH_ROUNDS", 2).max(1);
                let with_apalis = std::env::var("MQ_BENCH_APALIS").map_or(true, |v| v != "0");
                let apalis_setup = if with_apalis {
                    Some(apalis_setup(&url).await?)
                } else {
                    None
                };
                let (mut ours, mut ours_deleting, mut bare) = (None, None, None);
                let mut apalis: Option<Rates> = None;
                let mut apalis_error = None;
                for round in 1..=rounds {
                    drop_tables(&url, table).await?;
                    let q = PgQueue::connect(&url, options().common(CommonOptions::default()))
                        .await
                        .context("postgres")?;
                    let r = bench_queue(Arc::new(q), n, batch, concurrency).await?;
                    drop_tables(&url, table).await?;
                    print(&format!("postgres SqlQueue #{round}"), &r);
                    ours = Some(best(ours, r));
                    let q = PgQueue::connect(
                        &url,
                        options()
                            .delete_on_ack(true)
                            .common(CommonOptions::default()),
                    )
                    .await
                    .context("postgres")?;
                    let r = bench_queue(Arc::new(q), n, batch, concurrency).await?;
                    drop_tables(&url, table).await?;
                    print(&format!("postgres SqlQueue delete_on_ack #{round}"), &r);
                    ours_deleting = Some(best(ours_deleting, r));
                    let b = bench_bare_pg(&url, n, batch, concurrency).await?;
                    print(&format!("postgres bare SKIP LOCKED #{round}"), &b);
                    bare = Some(best(bare, b));
                    if apalis_setup.is_some() && apalis_error.is_none() {
                        match bench_apalis_pg(&url, round, n, batch, concurrency).await {
                            Ok(a) => {
                                print(&format!("postgres apalis #{round}"), &a);
                                apalis = Some(best(apalis, a));
                            }
                            Err(e) => {
                                eprintln!("apalis round {round} failed: {e:#}");
                                apalis_error = Some(e);
                            }
                        }
                    }
                }
                if let Some(setup) = apalis_setup {
                    apalis_teardown(&url, setup).await?;
                }
                let (ours, ours_deleting, bare) = (
                    ours.context("no round")?,
                    ours_deleting.context("no round")?,
                    bare.context("no round")?,
                );
                print("postgres SqlQueue (best)", &ours);
                print("postgres SqlQueue delete_on_ack (best)", &ours_deleting);
                print("postgres bare (best)", &bare);
                if let Some(apalis) = &apalis {
                    print("postgres apalis (best)", apalis);
                }
                let ratio = |ours_label: &str, ours: &Rates, label: &str, other: &Rates| {
                    println!(
                        "postgres ratio {ours_label} / {label}: claim+ack {:.2}x, end-to-end {:.2}x, publish {:.2}x",
                        ours.consume / other.consume,
                        ours.end_to_end / other.end_to_end,
                        ours.publish / other.publish
                    );
                };
                for (ours_label, ours) in [
                    ("SqlQueue", &ours),
                    ("SqlQueue delete_on_ack", &ours_deleting),
                ] {
                    ratio(ours_label, ours, "bare", &bare);
                    if let Some(apalis) = &apalis {
                        ratio(ours_label, ours, "apalis", apalis);
                    }
                }
                // The default mode (completed rows kept) against the bare loop shows how much
                // of the database the queue uses; the aim is most of it.
                target(
                    "postgres default end-to-end",
                    ours.end_to_end,
                    "msg/s",
                    Goal::AtLeast(40_000.0),
                );
                target(
                    "postgres default / bare end-to-end",
                    ours.end_to_end / bare.end_to_end,
                    "x",
                    Goal::AtLeast(0.7),
                );
                target(
                    "postgres default / bare claim+ack",
                    ours.consume / bare.consume,
                    "x",
                    Goal::AtLeast(0.6),
                );
                target(
                    "postgres delete_on_ack / bare end-to-end",
                    ours_deleting.end_to_end / bare.end_to_end,
                    "x",
                    Goal::AtLeast(0.8),
                );
                if let Some(apalis) = &apalis {
                    for (label, r) in [("default", &ours), ("delete_on_ack", &ours_deleting)] {
                        target(
                            &format!("postgres {label} / apalis end-to-end"),
                            r.end_to_end / apalis.end_to_end,
                            "x",
                            Goal::AtLeast(3.0),
                        );
                    }
                }
                if env_usize("MQ_BENCH_DEPTH", 1_000_000) > 0 {
                    depth::run(&url, options, n, batch, concurrency).await?;
                }
                failed = apalis_error.map(|e| e.context("apalis-postgres"));
            }
            Err(_) => eprintln!("skipping postgres: MQ_TEST_POSTGRES_URL is not set"),
        }
    }
    if dbs.contains("mysql") {
        match std::env::var("MQ_TEST_MYSQL_URL") {
            Ok(url) => {
                drop_tables(&url, table).await?;
                let q = MySqlQueue::connect(&url, options().common(CommonOptions::default()))
                    .await
                    .context("mysql")?;
                let r = bench_queue(Arc::new(q), n, batch, concurrency).await?;
                drop_tables(&url, table).await?;
                print("mysql/mariadb SqlQueue", &r);
            }
            Err(_) => eprintln!("skipping mysql: MQ_TEST_MYSQL_URL is not set"),
        }
    }
    if dbs.contains("sqlite") {
        let path = std::env::temp_dir().join(format!("mq-bench-{}.db", std::process::id()));
        let url = format!("sqlite://{}", path.display());
        let q = SqliteQueue::connect(&url, options().common(CommonOptions::default()))
            .await
            .context("sqlite")?;
        let r = bench_queue(Arc::new(q), n, batch, concurrency).await?;
        print("sqlite SqlQueue", &r);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
