//! A simulated fleet: 1,024 shards read by 8, 16 and 32 instances in one process, each with its
//! own runtime and its own connection to a real Redis (a `redis-server` started by the bench on a
//! free loopback port, so its command counts are the fleet's alone); the shard listing comes
//! from a fake Kinesis that lists the shards and answers every read with no records.
//!
//! ```text
//! cargo xtask bench fleet
//! BENCH_FLEET_SIZES=8 cargo run --release -p mq-kinesis --all-features --example bench_fleet
//! ```
//!
//! For each fleet size it prints the time to a balanced assignment (every shard held, no
//! instance more than one shard above another) after the start, after a join, after a graceful
//! leave and after a crash, and the Redis commands per second (from `INFO commandstats`) per
//! instance and in total at steady state, for 1,024 and for 256 shards side by side, and per
//! instance with the lease store's keys spread over 16 Redis Cluster slot buckets (on one plain
//! Redis: the bench counts commands, not where they go).
//!
//! Then the same fleets with their leases in a PostgreSQL lease table (`TableLeaseStore` on
//! `PgLeaseTable`, the server of `MQ_TEST_POSTGRES_URL`, which `cargo xtask bench fleet`
//! starts): balanced times, and the lease-table statements per second per instance, counted at
//! the table, for 1,024 and 256 shards. `BENCH_FLEET_LEASES=redis` or `=postgres` runs one only.

// the instance harness the integration tests run on
#[path = "../tests/common/emulator.rs"]
mod emulator;
#[path = "../tests/common/instance.rs"]
mod instance;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use instance::Instance;
use mq_bench_report::{Goal, target};
use mq_core::backend::{LeaseTable, TableRecord};
use mq_core::{Batch, ConsumerOptions, HandlerContext, QueueName, handler_fn};
use mq_kinesis::{KinesisOptions, LeaseStore, RedisLeaseStore, TableLeaseStore};
use serde_json::{Value, json};

const STREAM: &str = "fleet";
const STEADY: Duration = Duration::from_secs(10);
const BALANCE_GOAL: f64 = 5.0;
/// The slot buckets of the bucketed run.
const BUCKETS: u16 = 16;
/// Commands per instance per second with [`BUCKETS`] buckets, counting those the scripts run:
/// each membership renewal (every third of the 2 s membership TTL) runs a script of 5 commands
/// on every bucket's copy, and each lease-version check (every rebalance interval, 250 ms) reads
/// every bucket's counter: about 12 per bucket on top of the one-bucket rate (about 35),
/// whatever the number of shards.
const BUCKETED_GOAL: f64 = 12.0 * BUCKETS as f64 + 40.0;

/// A Kinesis that knows one stream of `shards` open shards and has no records.
async fn fake_kinesis(shards: usize) -> anyhow::Result<String> {
    let listing: Vec<Value> = (0..shards)
        .map(|i| {
            json!({
                "ShardId": format!("shardId-{i:012}"),
                "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "1"},
                "SequenceNumberRange": {"StartingSequenceNumber": "1"},
            })
        })
        .collect();
    let listing = Arc::new(listing);
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let listing = listing.clone();
        async move {
            let op = headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('.').next())
                .unwrap_or_default()
                .to_owned();
            let body = match op.as_str() {
                "DescribeStreamSummary" => json!({"StreamDescriptionSummary": {
                    "StreamName": STREAM,
                    "StreamARN": format!("arn:aws:kinesis:us-east-1:000000000000:stream/{STREAM}"),
                    "StreamStatus": "ACTIVE",
                    "RetentionPeriodHours": 24,
                    "StreamCreationTimestamp": 0,
                    "EnhancedMonitoring": [],
                    "OpenShardCount": listing.len(),
                }}),
                "ListShards" => json!({"Shards": *listing}),
                "GetShardIterator" => json!({"ShardIterator": "it"}),
                "GetRecords" => {
                    json!({"Records": [], "NextShardIterator": "it", "MillisBehindLatest": 0})
                }
                _ => {
                    return (StatusCode::BAD_REQUEST, format!("{op} is not faked")).into_response();
                }
            };
            (
                [("content-type", "application/x-amz-json-1.1")],
                body.to_string(),
            )
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

/// A `redis-server` of the bench's own, without persistence, stopped on drop.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()?;
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..100 {
            if cli(&url, &["PING"]).is_ok_and(|r| r.trim() == "PONG") {
                return Ok(Redis { child, url });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("redis-server on port {port} did not start")
    }

    /// Calls made so far (every command, including those run by scripts).
    fn commands(&self) -> anyhow::Result<u64> {
        let info = cli(&self.url, &["INFO", "commandstats"])?;
        Ok(info
            .lines()
            .filter_map(|l| l.split("calls=").nth(1))
            .filter_map(|rest| rest.split(',').next())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("redis-cli")
        .args(["-u", url])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A lease table that counts the calls made to it (each one statement on PostgreSQL).
#[derive(Debug)]
struct Counted {
    inner: mq_sql::PgLeaseTable,
    calls: Arc<AtomicU64>,
}

impl Counted {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[mq_core::async_trait]
impl LeaseTable for Counted {
    async fn now_ms(&self) -> mq_core::Result<u64> {
        self.count();
        self.inner.now_ms().await
    }
    async fn get(&self, s: &str, k: &str, n: &str) -> mq_core::Result<Option<TableRecord>> {
        self.count();
        self.inner.get(s, k, n).await
    }
    async fn list(&self, s: &str, k: &str) -> mq_core::Result<Vec<(String, TableRecord)>> {
        self.count();
        self.inner.list(s, k).await
    }
    async fn put(
        &self,
        s: &str,
        k: &str,
        n: &str,
        v: &str,
        expected: Option<u64>,
    ) -> mq_core::Result<bool> {
        self.count();
        self.inner.put(s, k, n, v, expected).await
    }
    async fn delete(&self, s: &str, k: &str, n: &str, expected: u64) -> mq_core::Result<bool> {
        self.count();
        self.inner.delete(s, k, n, expected).await
    }
    async fn bump(&self, s: &str, k: &str, n: &str) -> mq_core::Result<u64> {
        self.count();
        self.inner.bump(s, k, n).await
    }
}

/// Where a fleet keeps its leases.
enum Leases {
    /// A redis-server of the bench's own, with this many slot buckets.
    Redis(Redis, u16),
    /// A PostgreSQL lease table, and the calls every instance's table made.
    Postgres { url: String, calls: Arc<AtomicU64> },
}

/// The PostgreSQL lease table of the bench runs, dropped before each.
const TABLE: &str = "mq_bench_fleet_leases";

impl Leases {
    async fn postgres() -> anyhow::Result<Self> {
        let url = std::env::var("MQ_TEST_POSTGRES_URL").map_err(|_| {
            anyhow::anyhow!(
                "MQ_TEST_POSTGRES_URL is not set: run `cargo xtask bench fleet`, which starts the \
                 services, or set BENCH_FLEET_LEASES=redis"
            )
        })?;
        let pool = sqlx::PgPool::connect(&url).await?;
        for t in [TABLE.to_owned(), format!("{TABLE}_versions")] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                .execute(&pool)
                .await?;
        }
        Ok(Leases::Postgres {
            url,
            calls: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A store of one instance (or of the observer), with a connection of its own.
    async fn store(&self) -> anyhow::Result<Arc<dyn LeaseStore>> {
        Ok(match self {
            Leases::Redis(redis, buckets) => Arc::new(
                RedisLeaseStore::connect(&redis.url, "bench")
                    .await?
                    .slot_buckets(*buckets)?,
            ),
            Leases::Postgres { url, calls } => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(
                        std::env::var("BENCH_FLEET_PG_POOL")
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(2),
                    )
                    .connect(url)
                    .await?;
                let inner = mq_sql::PgLeaseTable::from_pool(pool, TABLE).await?;
                let calls = calls.clone();
                Arc::new(TableLeaseStore::new(Arc::new(Counted { inner, calls })))
            }
        })
    }

    /// The calls the lease store served so far.
    fn calls(&self) -> anyhow::Result<u64> {
        match self {
            Leases::Redis(redis, _) => redis.commands(),
            Leases::Postgres { calls, .. } => Ok(calls.load(Ordering::Relaxed)),
        }
    }
}

struct Fleet {
    endpoint: String,
    leases: Leases,
    instances: BTreeMap<String, Instance>,
    next: usize,
    observer: Arc<dyn LeaseStore>,
}

impl Fleet {
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let id = format!("i{:02}", self.next);
        self.next += 1;
        let store = self.leases.store().await?;
        let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
        let instance = Instance::spawn(
            self.endpoint.clone(),
            KinesisOptions::new(store).instance_id(id.clone()),
            QueueName::new(STREAM)?,
            handler,
            ConsumerOptions::default(),
        );
        self.instances.insert(id, instance);
        Ok(())
    }

    /// Waits until all `shards` are held by exactly the running instances, balanced; the time it
    /// took from `since`.
    async fn balanced(&self, shards: usize, since: Instant) -> anyhow::Result<f64> {
        let n = self.instances.len();
        let deadline = since + Duration::from_secs(120);
        loop {
            let mut held: BTreeMap<String, usize> = BTreeMap::new();
            for l in self.observer.leases(STREAM).await? {
                if let (true, Some(o)) = (l.live, l.owner) {
                    *held.entry(o).or_default() += 1;
                }
            }
            let total: usize = held.values().sum();
            let (min, max) = (
                held.values().copied().min().unwrap_or(0),
                held.values().copied().max().unwrap_or(0),
            );
            if total == shards
                && held.len() == n
                && held.keys().all(|k| self.instances.contains_key(k))
                && max - min <= 1
            {
                return Ok(since.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                anyhow::bail!("not balanced after 120 s: {held:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Lease-store calls per second at steady state: (total, per instance).
async fn steady_rate(leases: &Leases, instances: usize) -> anyhow::Result<(f64, f64)> {
    let before = leases.calls()?;
    tokio::time::sleep(STEADY).await;
    // Redis: INFO itself counts one call
    let own = u64::from(matches!(leases, Leases::Redis(..)));
    let calls = leases.calls()?.saturating_sub(before + own);
    let total = calls as f64 / STEADY.as_secs_f64();
    Ok((total, total / instances as f64))
}

/// Where a run keeps its leases: Redis with this many slot buckets, or PostgreSQL.
#[derive(Clone, Copy)]
enum Kind {
    Redis(u16),
    Postgres,
}

/// One fleet of `n` instances over `shards` shards with its leases in `kind`: balanced times
/// (start, join, leave, crash) when `changes`, and the steady-state call rates.
async fn run(
    n: usize,
    shards: usize,
    changes: bool,
    kind: Kind,
) -> anyhow::Result<(Vec<(&'static str, f64)>, (f64, f64))> {
    let leases = match kind {
        Kind::Redis(buckets) => Leases::Redis(Redis::start()?, buckets),
        Kind::Postgres => Leases::postgres().await?,
    };
    let endpoint = fake_kinesis(shards).await?;
    let mut fleet = Fleet {
        observer: leases.store().await?,
        endpoint,
        leases,
        instances: BTreeMap::new(),
        next: 0,
    };
    let mut times = Vec::new();
    let t = Instant::now();
    for _ in 0..n {
        fleet.spawn().await?;
    }
    times.push(("start", fleet.balanced(shards, t).await?));
    // settle: the first discovery round after the start
    tokio::time::sleep(Duration::from_secs(6)).await;
    let rates = steady_rate(&fleet.leases, n).await?;
    if changes {
        let t = Instant::now();
        fleet.spawn().await?;
        times.push(("join", fleet.balanced(shards, t).await?));
        let first = fleet.instances.keys().next().cloned().unwrap_or_default();
        let t = Instant::now();
        if let Some(i) = fleet.instances.remove(&first) {
            i.stop();
        }
        times.push(("leave", fleet.balanced(shards, t).await?));
        let first = fleet.instances.keys().next().cloned().unwrap_or_default();
        let t = Instant::now();
        if let Some(i) = fleet.instances.remove(&first) {
            i.crash();
        }
        times.push(("crash", fleet.balanced(shards, t).await?));
    }
    for (_, i) in std::mem::take(&mut fleet.instances) {
        i.crash();
    }
    Ok((times, rates))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let sizes: Vec<usize> = std::env::var("BENCH_FLEET_SIZES")
        .unwrap_or_else(|_| "8,16,32".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let which = std::env::var("BENCH_FLEET_LEASES").unwrap_or_else(|_| "redis,postgres".into());
    for n in &sizes {
        let n = *n;
        if which.contains("redis") {
            redis_fleet(n).await?;
        }
        if which.contains("postgres") {
            postgres_fleet(n).await?;
        }
    }
    Ok(())
}

fn balance_targets(times: &[(&str, f64)], n: usize, on: &str) {
    for (what, secs) in times {
        target(
            &format!("balanced after {what}, 1024 shards x {n} instances{on}"),
            *secs,
            "s",
            Goal::AtMost(BALANCE_GOAL),
        );
    }
}

async fn redis_fleet(n: usize) -> anyhow::Result<()> {
    let (times, (total, per)) = run(n, 1024, true, Kind::Redis(1)).await?;
    let (_, (small_total, small_per)) = run(n, 256, false, Kind::Redis(1)).await?;
    let (_, (_, bucketed_per)) = run(n, 1024, false, Kind::Redis(BUCKETS)).await?;
    balance_targets(&times, n, "");
    println!(
        "redis commands/s at steady state, {n} instances: 1024 shards {total:.0} total, \
         {per:.1} per instance; 256 shards {small_total:.0} total, {small_per:.1} per instance"
    );
    // independent of the shard count: at most 10% more per instance with 4x the shards
    target(
        &format!("redis commands per instance per second, 1024 vs 256 shards x {n} instances"),
        per / small_per.max(f64::MIN_POSITIVE),
        "x",
        Goal::AtMost(1.1),
    );
    target(
        &format!(
            "redis commands per instance per second with {BUCKETS} slot buckets, 1024 shards x {n} instances"
        ),
        bucketed_per,
        "commands/s",
        Goal::AtMost(BUCKETED_GOAL),
    );
    Ok(())
}

async fn postgres_fleet(n: usize) -> anyhow::Result<()> {
    let (times, (total, per)) = run(n, 1024, true, Kind::Postgres).await?;
    let (_, (small_total, small_per)) = run(n, 256, false, Kind::Postgres).await?;
    balance_targets(&times, n, " on a PostgreSQL lease table");
    println!(
        "lease-table statements/s at steady state, {n} instances: 1024 shards {total:.0} total, \
         {per:.1} per instance; 256 shards {small_total:.0} total, {small_per:.1} per instance"
    );
    target(
        &format!(
            "lease-table statements per instance per second, 1024 vs 256 shards x {n} instances"
        ),
        per / small_per.max(f64::MIN_POSITIVE),
        "x",
        Goal::AtMost(1.1),
    );
    Ok(())
}
