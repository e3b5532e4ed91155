//! Throughput of the SQL queue on each database: publish in batches, then claim + ack through
//! `SqlQueue` with the default (acknowledged rows kept) and with `SqlOptions::delete_on_ack`,
//! against the same workload as a bare sqlx loop on a narrow table (claim with `SKIP LOCKED`,
//! ack by `DELETE`: the practical limit of that database; beside it the same loop keeping its
//! rows in place and moving them to a history table, to show what keeping acknowledged rows costs
//! by itself; on PostgreSQL, the same loop on the queue's own table, to show what the queue's
//! schema costs apart from its statements, and on a split layout whose claims and
//! acknowledgements rewrite only a narrow table) and, on PostgreSQL, apalis's
//! PostgreSQL backend (`apalis-postgres`, in its own `apalis` schema). The contenders are
//! interleaved round by round and the best round of each counts; CPU time per message (this
//! process, and the local database server) is printed beside each rate.
//!
//! ```text
//! MQ_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//! MQ_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test \
//! cargo run --release -p mq-bench-sql
//! ```
//!
//! Environment: `MQ_BENCH_MESSAGES` (100000), `MQ_BENCH_BATCH` (500), `MQ_BENCH_CONCURRENCY` (4),
//! `MQ_BENCH_DATABASES` (`postgres,mysql,sqlite`), `MQ_BENCH_ROUNDS` (2),
//! `MQ_BENCH_APALIS` (`1`; `0` skips apalis), `MQ_BENCH_DEPTH` (1000000 rows waiting, then in
//! history, beside the measured messages; `0` skips that part). A database whose URL is not set
//! is skipped.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use mq_bench_report::{Goal, target};
use mq_core::{CommonOptions, MessageQueue, QueueName};
use mq_sql::{MySqlQueue, PgQueue, SqlOptions, SqliteQueue};
use sqlx::{AssertSqlSafe, PgPool};

mod apalis_pg;
mod bare;
mod cpu;
mod depth;
mod plain;
mod queue_table;
mod split_table;
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
    } else {
        let options = url
            .parse::<sqlx::sqlite::SqliteConnectOptions>()?
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await?;
        for t in derived_tables(table) {
            sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                .execute(&pool)
                .await?;
        }
        pool.close().await;
    }
    Ok(())
}

/// Removes the SQLite database at `url` with its journal files.
fn remove_sqlite_files(url: &str) {
    let path = url.trim_start_matches("sqlite://");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
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

/// A database the benchmark runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Database {
    Postgres,
    MySql,
    Sqlite,
}

impl Database {
    /// Its name in `MQ_BENCH_DATABASES` and in the printed lines.
    fn key(self) -> &'static str {
        match self {
            Database::Postgres => "postgres",
            Database::MySql => "mysql",
            Database::Sqlite => "sqlite",
        }
    }

    /// Where it is: the test URL from the environment, or a file of this run for SQLite.
    fn url(self) -> Option<String> {
        match self {
            Database::Postgres => std::env::var("MQ_TEST_POSTGRES_URL").ok(),
            Database::MySql => std::env::var("MQ_TEST_MYSQL_URL").ok(),
            Database::Sqlite => {
                let path = std::env::temp_dir().join(format!("mq-bench-{}.db", std::process::id()));
                Some(format!("sqlite://{}", path.display()))
            }
        }
    }

    async fn queue(self, url: &str, options: SqlOptions) -> Result<Arc<dyn MessageQueue>> {
        let options = options.common(CommonOptions::default());
        Ok(match self {
            Database::Postgres => Arc::new(PgQueue::connect(url, options).await?),
            Database::MySql => Arc::new(MySqlQueue::connect(url, options).await?),
            Database::Sqlite => Arc::new(SqliteQueue::connect(url, options).await?),
        })
    }
}

/// The best round of each contender on one database.
#[derive(Debug, Default)]
struct Contenders {
    ours: Option<Rates>,
    deleting: Option<Rates>,
    bare: Option<Rates>,
    bare_kept: Option<Rates>,
    bare_moved: Option<Rates>,
    /// The bare loop on other PostgreSQL tables, in the order of [`TABLES`].
    tables: [Option<Rates>; 5],
}

/// One round on `db`: `SqlQueue` keeping acknowledged rows, `SqlQueue` deleting them, and the
/// bare loop deleting and keeping its rows, each on fresh tables; prints each and keeps the best
/// of each in `best`.
async fn round(
    db: Database,
    url: &str,
    options: &dyn Fn() -> SqlOptions,
    round: usize,
    (n, batch, concurrency): (usize, usize, usize),
    best_of: &mut Contenders,
) -> Result<()> {
    let name = db.key();
    let table = options().get_table().to_owned();
    for delete in [false, true] {
        drop_tables(url, &table).await?;
        let q = db
            .queue(url, options().delete_on_ack(delete))
            .await
            .context(name)?;
        let r = bench_queue(q, n, batch, concurrency).await?;
        drop_tables(url, &table).await?;
        let (label, slot) = if delete {
            ("SqlQueue delete_on_ack", &mut best_of.deleting)
        } else {
            ("SqlQueue", &mut best_of.ours)
        };
        print(&format!("{name} {label} #{round}"), &r);
        *slot = Some(best(*slot, r));
    }
    let workload = (n, batch, concurrency);
    let b = bare::bench_bare(url, workload, bare::Ack::Delete).await?;
    print(&format!("{name} bare #{round}"), &b);
    best_of.bare = Some(best(best_of.bare, b));
    let k = bare::bench_bare(url, workload, bare::Ack::Keep).await?;
    print(&format!("{name} bare rows kept #{round}"), &k);
    best_of.bare_kept = Some(best(best_of.bare_kept, k));
    let m = bare::bench_bare(url, workload, bare::Ack::Move).await?;
    print(&format!("{name} bare rows moved #{round}"), &m);
    best_of.bare_moved = Some(best(best_of.bare_moved, m));
    if db == Database::Postgres {
        for (slot, &(table, ack)) in best_of.tables.iter_mut().zip(&TABLES) {
            let r = match table {
                Table::Queue => queue_table::bench_queue_table(url, workload, ack).await?,
                Table::Split => split_table::bench_split_table(url, workload, ack).await?,
            };
            print(&format!("{name} {} #{round}", table_label(table, ack)), &r);
            *slot = Some(best(*slot, r));
        }
    }
    Ok(())
}

/// A PostgreSQL table layout the bare loop also runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    /// The table `SqlQueue` creates, with its columns and indexes.
    Queue,
    /// A narrow table for claims and acknowledgements beside one for the messages' columns.
    Split,
}

/// The bare loop's contenders on other PostgreSQL tables: each layout, each acknowledgement.
const TABLES: [(Table, bare::Ack); 5] = [
    (Table::Queue, bare::Ack::Delete),
    (Table::Queue, bare::Ack::Keep),
    (Table::Queue, bare::Ack::Move),
    (Table::Split, bare::Ack::Delete),
    (Table::Split, bare::Ack::Keep),
];

/// The printed name of the bare loop on `table` acknowledging by `ack`.
fn table_label(table: Table, ack: bare::Ack) -> String {
    let on = match table {
        Table::Queue => "the queue's table",
        Table::Split => "a split table",
    };
    let how = match ack {
        bare::Ack::Delete => "deleted",
        bare::Ack::Keep => "kept",
        bare::Ack::Move => "moved",
    };
    format!("bare on {on}, rows {how}")
}

/// Prints the best round of each contender on `db` and each mode's ratios to `other`.
fn print_ratios(db: Database, ours: &Rates, deleting: &Rates, label: &str, other: &Rates) {
    for (mode, r) in [("SqlQueue", ours), ("SqlQueue delete_on_ack", deleting)] {
        println!(
            "{} ratio {mode} / {label}: claim+ack {:.2}x, end-to-end {:.2}x, publish {:.2}x",
            db.key(),
            r.consume / other.consume,
            r.end_to_end / other.end_to_end,
            r.publish / other.publish
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let n = env_usize("MQ_BENCH_MESSAGES", 100_000);
    let batch = env_usize("MQ_BENCH_BATCH", 500);
    let concurrency = env_usize("MQ_BENCH_CONCURRENCY", 4);
    // Interleave the contenders round by round (the machine is shared: the best round of each
    // counts).
    let rounds = env_usize("MQ_BENCH_ROUNDS", 2).max(1);
    let dbs =
        std::env::var("MQ_BENCH_DATABASES").unwrap_or_else(|_| "postgres,mysql,sqlite".into());
    println!(
        "mq-sql bench: {n} messages, batch {batch}, concurrency {concurrency}, best of {rounds} rounds"
    );
    let options = || {
        SqlOptions::default()
            .table("mq_bench")
            .max_connections(concurrency as u32 * 2 + 2)
    };
    let workload = (n, batch, concurrency);

    // An apalis failure is reported at the end, after the other databases ran.
    let mut failed: Option<anyhow::Error> = None;
    for db in [Database::Postgres, Database::MySql, Database::Sqlite] {
        if !dbs.contains(db.key()) {
            continue;
        }
        let Some(url) = db.url() else {
            eprintln!("skipping {}: its test URL is not set", db.key());
            continue;
        };
        let with_apalis =
            db == Database::Postgres && std::env::var("MQ_BENCH_APALIS").map_or(true, |v| v != "0");
        let apalis_setup = if with_apalis {
            Some(apalis_pg::apalis_setup(&url).await?)
        } else {
            None
        };
        let mut best_of = Contenders::default();
        let (mut apalis, mut apalis_error): (Option<Rates>, Option<anyhow::Error>) = (None, None);
        for r in 1..=rounds {
            round(db, &url, &options, r, workload, &mut best_of).await?;
            if apalis_setup.is_some() && apalis_error.is_none() {
                match apalis_pg::bench_apalis_pg(&url, r, n, batch, concurrency).await {
                    Ok(a) => {
                        print(&format!("postgres apalis #{r}"), &a);
                        apalis = Some(best(apalis, a));
                    }
                    Err(e) => {
                        eprintln!("apalis round {r} failed: {e:#}");
                        apalis_error = Some(e);
                    }
                }
            }
        }
        if let Some(setup) = apalis_setup {
            apalis_pg::apalis_teardown(&url, setup).await?;
        }
        if db == Database::Sqlite {
            remove_sqlite_files(&url);
        }
        let (ours, deleting, bare, bare_kept, bare_moved) = (
            best_of.ours.context("no round")?,
            best_of.deleting.context("no round")?,
            best_of.bare.context("no round")?,
            best_of.bare_kept.context("no round")?,
            best_of.bare_moved.context("no round")?,
        );
        let name = db.key();
        print(&format!("{name} SqlQueue (best)"), &ours);
        print(&format!("{name} SqlQueue delete_on_ack (best)"), &deleting);
        print(&format!("{name} bare (best)"), &bare);
        print(&format!("{name} bare rows kept (best)"), &bare_kept);
        print(&format!("{name} bare rows moved (best)"), &bare_moved);
        if let Some(apalis) = &apalis {
            print("postgres apalis (best)", apalis);
        }
        print_ratios(db, &ours, &deleting, "bare", &bare);
        // What keeping rows costs the bare loop itself, in place or moved to a history table:
        // the part of the default mode's gap to the bare loop that any queue keeping
        // acknowledged rows pays.
        for (how, kept) in [("kept", &bare_kept), ("moved", &bare_moved)] {
            println!(
                "{name} ratio bare rows {how} / bare: claim+ack {:.2}x, end-to-end {:.2}x; \
                 SqlQueue / bare rows {how}: claim+ack {:.2}x, end-to-end {:.2}x",
                kept.consume / bare.consume,
                kept.end_to_end / bare.end_to_end,
                ours.consume / kept.consume,
                ours.end_to_end / kept.end_to_end,
            );
        }
        // The bare loop on the queue's table: its gap to the bare loop is what the queue's row
        // costs, its gap to `SqlQueue` what the queue's statements cost. On the split table:
        // what the row would cost if claims rewrote only the columns they change.
        for (r, &(table, ack)) in best_of.tables.iter().zip(&TABLES) {
            let Some(r) = r else { continue };
            let label = table_label(table, ack);
            print(&format!("{name} {label} (best)"), r);
            let (mode, mine) = if ack == bare::Ack::Delete {
                ("SqlQueue delete_on_ack", &deleting)
            } else {
                ("SqlQueue", &ours)
            };
            println!(
                "{name} ratio {label} / bare: claim+ack {:.2}x, end-to-end {:.2}x; \
                 {mode} / it: claim+ack {:.2}x, end-to-end {:.2}x",
                r.consume / bare.consume,
                r.end_to_end / bare.end_to_end,
                mine.consume / r.consume,
                mine.end_to_end / r.end_to_end,
            );
        }
        if let Some(apalis) = &apalis {
            print_ratios(db, &ours, &deleting, "apalis", apalis);
        }
        if db != Database::Postgres {
            // The goals are PostgreSQL's; elsewhere the table shows where each mode stands.
            continue;
        }
        // The default mode (completed rows kept) against the bare loop shows how much of the
        // database the queue uses; the aim is most of it.
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
            deleting.end_to_end / bare.end_to_end,
            "x",
            Goal::AtLeast(0.8),
        );
        if let Some(apalis) = &apalis {
            for (label, r) in [("default", &ours), ("delete_on_ack", &deleting)] {
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
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
