//! Crash takeover with every instance in a process of its own (the test binary started again as
//! a child), default settings and Redis leases unless a test says otherwise, under a steady load:
//!
//! - kill -9 one of 3 instances: each orphaned shard's takeover time is printed (target <= 3 s),
//!   nothing is lost and at most one batch per orphaned shard is delivered twice; again with a
//!   4th instance joining at the kill;
//! - SIGSTOP one of 3 instances for longer than its membership TTL, then SIGCONT: its shards
//!   are taken over, and no batch of a shard is handled by two instances at once; again on the
//!   3-node Redis Cluster with the leases spread over 16 slot buckets;
//! - the kill and the pause again with the leases on PostgreSQL and MongoDB (`TableLeaseStore`).
//!
//! A child prints one line per handled batch (instance, shard, start and end in Unix ms, message
//! ids); the parent reads them from its stdout.

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/redis_keys.rs"]
mod redis_keys;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emulator::Emulator;
use mq_core::testkit::eventually;
use mq_core::{Batch, ConsumerOptions, HandlerContext, MessageQueue, QueueName, handler_fn};
use mq_kinesis::{KinesisOptions, KinesisQueue, LeaseStore, RedisLeaseStore, TableLeaseStore};

const CHILD: &str = "MQ_KINESIS_FAILOVER_CHILD";
const SHARDS: i32 = 6;

fn unix_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// Not a test of its own: the body of a child instance, which the tests below start in a
/// process of its own. Without the child's environment it does nothing.
#[test]
fn child_instance() {
    let Ok(instance) = std::env::var(CHILD) else {
        return;
    };
    let endpoint = std::env::var("MQ_FAILOVER_ENDPOINT").unwrap();
    let prefix = std::env::var("MQ_FAILOVER_PREFIX").unwrap();
    let stream = std::env::var("MQ_FAILOVER_STREAM").unwrap();
    let leases = Leases::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = leases.open(&prefix).await;
        let q = QueueName::new(&stream).unwrap();
        let queue = KinesisQueue::with_client(
            emulator::client(&endpoint, true, None, None),
            KinesisOptions::new(store).instance_id(instance.clone()),
        );
        queue.register(&q).await.unwrap();
        let name = instance.clone();
        let handler = Arc::new(handler_fn(move |batch: Batch, ctx: HandlerContext| {
            let name = name.clone();
            async move {
                let start = unix_ms();
                // key/n: unique per published message (see the fleet publisher)
                let ids: Vec<String> = batch
                    .iter()
                    .map(|m| {
                        format!(
                            "{}/{}",
                            m.payload["key"].as_str().unwrap_or_default(),
                            m.payload["n"].as_u64().unwrap_or_default()
                        )
                    })
                    .collect();
                let line = format!(
                    "@@D {name} {} {start} {} {}",
                    ctx.shard_id().unwrap_or_default(),
                    unix_ms(),
                    ids.join(",")
                );
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }));
        let handle = queue
            .consume(&q, handler, ConsumerOptions::default())
            .await
            .unwrap();
        // runs until its stdin closes (a graceful stop) or it is killed
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        })
        .await;
        handle.stop().await;
        let _ = queue.shutdown().await;
    });
}

/// One batch as a child handled it.
#[derive(Debug, Clone)]
struct Batched {
    instance: String,
    shard: String,
    start: u64,
    end: u64,
    ids: Vec<String>,
}

#[derive(Clone, Default)]
struct Deliveries(Arc<Mutex<Vec<Batched>>>);

impl Deliveries {
    fn all(&self) -> Vec<Batched> {
        self.0.lock().unwrap().clone()
    }

    fn distinct(&self) -> usize {
        let d = self.0.lock().unwrap();
        d.iter()
            .flat_map(|b| b.ids.iter())
            .collect::<HashSet<_>>()
            .len()
    }

    /// The first batch of `shard` by anyone but `not` that starts at or after `at`.
    fn first_after(&self, shard: &str, at: u64, not: &str) -> Option<u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.shard == shard && b.start >= at && b.instance != not)
            .map(|b| b.start)
            .min()
    }
}

struct ChildInstance {
    name: String,
    child: Child,
}

impl ChildInstance {
    fn spawn(
        name: &str,
        endpoint: &str,
        prefix: &str,
        stream: &str,
        leases: &Leases,
        log: &Deliveries,
    ) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_instance",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, name)
            .env("MQ_FAILOVER_ENDPOINT", endpoint)
            .env("MQ_FAILOVER_PREFIX", prefix)
            .env("MQ_FAILOVER_STREAM", stream)
            .envs(leases.to_env())
            .env("RUST_LOG", "off")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // the harness may print "test child_instance ... " before the first line
                let Some((_, record)) = line.split_once("@@D ") else {
                    continue;
                };
                let parts: Vec<&str> = record.split(' ').collect();
                if let [instance, shard, start, end, ids] = parts[..] {
                    log.0.lock().unwrap().push(Batched {
                        instance: instance.to_owned(),
                        shard: shard.to_owned(),
                        start: start.parse().unwrap_or(0),
                        end: end.parse().unwrap_or(0),
                        ids: ids.split(',').map(str::to_owned).collect(),
                    });
                }
            }
        });
        ChildInstance {
            name: name.to_owned(),
            child,
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {}", self.name);
    }

    /// kill -9: no release, no checkpoint, no goodbye.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Closes its stdin (a graceful stop) and waits, killing it after 30 s.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a fleet keeps its leases: the store's kind, the service variable naming its server,
/// and the server's URL.
#[derive(Debug, Clone)]
struct Leases {
    kind: LeaseKind,
    var: &'static str,
    url: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum LeaseKind {
    /// `RedisLeaseStore` over this many slot buckets.
    Redis(u16),
    /// `TableLeaseStore` on a PostgreSQL table.
    Postgres,
    /// `TableLeaseStore` on a MongoDB collection.
    Mongo,
}

impl Leases {
    /// The leases on the server `var` names; `None` after printing why the test skips.
    fn on(kind: LeaseKind, var: &'static str, test: &str) -> Option<Self> {
        match mq_core::testkit::service_url(var) {
            Ok(url) => Some(Leases { kind, var, url }),
            Err(reason) => {
                eprintln!("skipping {test}: {reason}");
                None
            }
        }
    }

    fn to_env(&self) -> Vec<(&'static str, String)> {
        let kind = match self.kind {
            LeaseKind::Redis(buckets) => format!("redis:{buckets}"),
            LeaseKind::Postgres => "postgres".to_owned(),
            LeaseKind::Mongo => "mongo".to_owned(),
        };
        vec![
            ("MQ_FAILOVER_LEASES", kind),
            ("MQ_FAILOVER_LEASE_URL", self.url.clone()),
        ]
    }

    fn from_env() -> Self {
        let kind = std::env::var("MQ_FAILOVER_LEASES").unwrap();
        let kind = match kind.split_once(':') {
            Some(("redis", buckets)) => LeaseKind::Redis(buckets.parse().unwrap()),
            _ if kind == "postgres" => LeaseKind::Postgres,
            _ => LeaseKind::Mongo,
        };
        Leases {
            kind,
            var: "",
            url: std::env::var("MQ_FAILOVER_LEASE_URL").unwrap(),
        }
    }

    /// A store on the fleet's leases: `prefix` is the Redis key prefix, or the name of the
    /// table or collection.
    async fn open(&self, prefix: &str) -> Arc<dyn LeaseStore> {
        match self.kind {
            LeaseKind::Redis(buckets) => Arc::new(
                RedisLeaseStore::connect(&self.url, prefix)
                    .await
                    .unwrap()
                    .slot_buckets(buckets)
                    .unwrap(),
            ),
            LeaseKind::Postgres => Arc::new(TableLeaseStore::new(Arc::new(
                mq_sql::PgLeaseTable::connect(&self.url, prefix)
                    .await
                    .unwrap(),
            ))),
            LeaseKind::Mongo => {
                let options = mq_mongo::MongoOptions::default()
                    .database("mq_failover")
                    .lease_collection(prefix);
                Arc::new(TableLeaseStore::new(Arc::new(
                    mq_mongo::MongoLeaseTable::connect(&self.url, options)
                        .await
                        .unwrap(),
                )))
            }
        }
    }

    /// Removes what the fleet stored under `prefix`.
    async fn clean(&self, prefix: &str) {
        let pattern = format!("{prefix}:*");
        match self.kind {
            LeaseKind::Redis(_) if self.var == "REDIS_URL" => redis_keys::delete_matching(&pattern),
            LeaseKind::Redis(_) => redis_keys::delete_matching_cluster(&self.url, &pattern),
            LeaseKind::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP TABLE IF EXISTS {prefix}"
                )))
                .execute(&pool)
                .await
                .unwrap();
            }
            LeaseKind::Mongo => {
                let client = mongodb::Client::with_uri_str(&self.url).await.unwrap();
                client
                    .database("mq_failover")
                    .collection::<mongodb::bson::Document>(prefix)
                    .drop()
                    .await
                    .unwrap();
            }
        }
    }
}

/// A stream of [`SHARDS`] shards under a steady load, read by children.
struct Fleet {
    emu: Emulator,
    stream: String,
    /// The Redis key prefix, or the table or collection of the leases.
    prefix: String,
    leases: Leases,
    store: Arc<dyn LeaseStore>,
    log: Deliveries,
    publisher: Option<fleet::Publisher>,
}

impl Fleet {
    /// The fleet with its leases of `kind` on the server that `var` names.
    async fn start_on(name: &str, kind: LeaseKind, var: &'static str) -> Option<Self> {
        let leases = Leases::on(kind, var, name)?;
        let stream = format!("{name}-{}", ulid::Ulid::new().to_string().to_lowercase());
        let emu = Emulator::with_stream(&stream, SHARDS).await;
        let prefix = match kind {
            LeaseKind::Redis(_) => format!("mqtest-failover-{}", ulid::Ulid::new()),
            _ => format!(
                "mqt_failover_{}",
                ulid::Ulid::new().to_string().to_lowercase()
            ),
        };
        let store = leases.open(&prefix).await;
        let q = QueueName::new(&stream).unwrap();
        let publisher =
            fleet::Publisher::start(emu.client(), &q, 12, 12, Duration::from_millis(50)).await;
        Some(Fleet {
            emu,
            stream,
            prefix,
            leases,
            store,
            log: Deliveries::default(),
            publisher: Some(publisher),
        })
    }

    fn spawn(&self, name: &str) -> ChildInstance {
        ChildInstance::spawn(
            name,
            &self.emu.endpoint,
            &self.prefix,
            &self.stream,
            &self.leases,
            &self.log,
        )
    }

    async fn owners(&self) -> BTreeMap<String, Vec<String>> {
        fleet::owners(&*self.store, &self.stream).await
    }

    async fn wait_balanced(&self, members: usize, what: &str) -> BTreeMap<String, Vec<String>> {
        let per = SHARDS as usize / members;
        fleet::wait_owners(
            &*self.store,
            &self.stream,
            Duration::from_secs(60),
            what,
            |o| o.len() == members && o.values().all(|s| s.len() == per),
        )
        .await;
        self.owners().await
    }

    /// Stops publishing and waits until everything published was delivered: how many were.
    async fn drain(&mut self) -> u64 {
        let published = self.publisher.take().unwrap().stop().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while (self.log.distinct() as u64) < published {
            if tokio::time::Instant::now() > deadline {
                let mut last: BTreeMap<String, (String, u64)> = BTreeMap::new();
                for b in self.log.all() {
                    let e = last.entry(b.shard.clone()).or_default();
                    if b.start >= e.1 {
                        *e = (b.instance.clone(), b.start);
                    }
                }
                let seen: HashSet<String> =
                    self.log.all().into_iter().flat_map(|b| b.ids).collect();
                let missing: Vec<String> = (0..published)
                    .map(|j| format!("k{}/{}", j % 12, j / 12))
                    .filter(|id| !seen.contains(id))
                    .collect();
                panic!(
                    "missing {missing:?}; {} of {published} delivered; last batch per shard {last:?} (now {}); \
                     leases {:?}",
                    self.log.distinct(),
                    unix_ms(),
                    self.store.leases(&self.stream).await
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        published
    }

    async fn clean(&self) {
        self.leases.clean(&self.prefix).await;
    }
}

/// Lost and duplicated messages, and the duplicates per shard.
fn losses(log: &Deliveries, published: u64) -> (u64, usize, BTreeMap<String, usize>) {
    let all = log.all();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut dup: BTreeMap<String, usize> = BTreeMap::new();
    for b in &all {
        for id in &b.ids {
            if !seen.insert(id.as_str()) {
                *dup.entry(b.shard.clone()).or_default() += 1;
            }
        }
    }
    let lost = published.saturating_sub(seen.len() as u64);
    (lost, dup.values().sum(), dup)
}

fn print_target(what: &str, secs: f64, goal: f64) {
    let verdict = if secs <= goal { "met" } else { "NOT met" };
    println!("target {what}: {secs:.2} s (goal <= {goal}) {verdict}");
}

async fn kill_one_of_three(name: &str, joiner: bool) {
    kill_one_of_three_on(name, joiner, LeaseKind::Redis(1), "REDIS_URL").await;
}

async fn kill_one_of_three_on(name: &str, joiner: bool, kind: LeaseKind, var: &'static str) {
    let Some(mut fleet) = Fleet::start_on(name, kind, var).await else {
        return;
    };
    let a = fleet.spawn("a");
    let b = fleet.spawn("b");
    let c = fleet.spawn("c");
    let before = fleet.wait_balanced(3, "3 instances balanced").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let orphaned = before["c"].clone();
    let killed_at = unix_ms();
    c.kill();
    let d = joiner.then(|| fleet.spawn("d"));
    let log = fleet.log.clone();
    let shards = orphaned.clone();
    eventually(
        Duration::from_secs(60),
        "every orphaned shard read by another instance",
        move || {
            shards
                .iter()
                .all(|s| log.first_after(s, killed_at, "c").is_some())
        },
    )
    .await;
    let case = if joiner {
        "3 instances, one killed as a 4th joins"
    } else {
        "3 instances, one killed"
    };
    for shard in &orphaned {
        let taken = fleet
            .log
            .first_after(shard, killed_at, "c")
            .unwrap_or(killed_at);
        print_target(
            &format!("takeover of {shard} after kill -9 ({case}, defaults)"),
            (taken - killed_at) as f64 / 1000.0,
            3.0,
        );
    }
    if joiner {
        let log = fleet.log.clone();
        eventually(
            Duration::from_secs(60),
            "the joiner handles a batch",
            move || log.all().iter().any(|b| b.instance == "d"),
        )
        .await;
        let first = fleet
            .log
            .all()
            .iter()
            .filter(|b| b.instance == "d")
            .map(|b| b.start)
            .min()
            .unwrap_or(killed_at);
        print_target(
            &format!("first batch of the joiner after the kill ({case}, defaults)"),
            (first - killed_at) as f64 / 1000.0,
            3.0,
        );
        fleet.wait_balanced(3, "3 live instances balanced").await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let published = fleet.drain().await;
    let (lost, duplicates, per_shard) = losses(&fleet.log, published);
    let batch = ConsumerOptions::default().get_batch_size();
    println!(
        "{case}: published {published}, lost {lost}, duplicates {duplicates} {per_shard:?} \
         (at most one batch of {batch} per orphaned shard {orphaned:?})"
    );
    assert_eq!(lost, 0);
    for (shard, n) in &per_shard {
        assert!(
            orphaned.contains(shard),
            "{shard} was not orphaned yet has {n} duplicates"
        );
        assert!(
            *n <= batch,
            "{shard}: {n} duplicates > one batch of {batch}"
        );
    }
    for child in [Some(a), Some(b), d].into_iter().flatten() {
        child.stop();
    }
    fleet.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_of_three_instances() {
    kill_one_of_three("failover-kill", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_of_three_as_a_fourth_joins() {
    kill_one_of_three("failover-join", true).await;
}

/// The same with the leases and sessions on PostgreSQL (`TableLeaseStore`), no Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_of_three_with_postgres_leases() {
    let kind = LeaseKind::Postgres;
    kill_one_of_three_on("failover-kill-pg", false, kind, "MQ_TEST_POSTGRES_URL").await;
}

/// The same with the leases and sessions on MongoDB (`TableLeaseStore`), a 4th joining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_of_three_as_a_fourth_joins_with_mongo_leases() {
    kill_one_of_three_on("failover-join-mongo", true, LeaseKind::Mongo, "MONGODB_URI").await;
}

/// Batches of one shard by two instances at once: pairs whose times overlap, and batches of the
/// paused instance `paused` that start while another instance reads the shard (between its first
/// batch after `from` and its last).
fn overlapping(log: &Deliveries, paused: &str, from: u64) -> usize {
    let all = log.all();
    let mut by_shard: HashMap<&str, Vec<&Batched>> = HashMap::new();
    for b in &all {
        by_shard.entry(b.shard.as_str()).or_default().push(b);
    }
    let mut n = 0;
    for batches in by_shard.values() {
        for (i, x) in batches.iter().enumerate() {
            for y in &batches[i + 1..] {
                if x.instance != y.instance && x.start < y.end && y.start < x.end {
                    n += 1;
                }
            }
        }
        let others: Vec<&&Batched> = batches
            .iter()
            .filter(|b| b.instance != paused && b.start >= from)
            .collect();
        let (Some(first), Some(last)) = (
            others.iter().map(|b| b.start).min(),
            others.iter().map(|b| b.end).max(),
        ) else {
            continue;
        };
        n += batches
            .iter()
            .filter(|b| b.instance == paused && b.start >= first && b.start <= last)
            .count();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_instance_stops_before_its_shards_are_taken() {
    paused_instance("failover-pause", LeaseKind::Redis(1), "REDIS_URL").await;
}

/// The same on Redis Cluster with 16 slot buckets: each membership has a copy per bucket, and
/// the paused instance still stops before any of them expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_instance_stops_on_a_cluster_with_slot_buckets() {
    paused_instance(
        "failover-pause-buckets",
        LeaseKind::Redis(16),
        "MQ_TEST_REDIS_CLUSTER_URL",
    )
    .await;
}

/// The same with the leases and sessions on PostgreSQL (`TableLeaseStore`): the paused
/// instance's sessions expire by the database's clock, and it stops by its own before that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_instance_stops_with_postgres_leases() {
    let kind = LeaseKind::Postgres;
    paused_instance("failover-pause-pg", kind, "MQ_TEST_POSTGRES_URL").await;
}

async fn paused_instance(name: &str, kind: LeaseKind, var: &'static str) {
    let Some(mut fleet) = Fleet::start_on(name, kind, var).await else {
        return;
    };
    let a = fleet.spawn("a");
    let b = fleet.spawn("b");
    let c = fleet.spawn("c");
    let before = fleet.wait_balanced(3, "3 instances balanced").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paused: BTreeSet<String> = before["c"].iter().cloned().collect();
    let paused_at = unix_ms();
    c.signal("-STOP");
    let log = fleet.log.clone();
    let shards = paused.clone();
    eventually(
        Duration::from_secs(60),
        "the paused instance's shards read by others",
        move || {
            shards
                .iter()
                .all(|s| log.first_after(s, paused_at, "c").is_some())
        },
    )
    .await;
    let taken = unix_ms();
    // longer than the membership TTL (2 s) in all
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.signal("-CONT");
    let resumed = unix_ms();
    // it comes back as a new member and gets its share by handoff
    fleet
        .wait_balanced(3, "balanced again after the pause")
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let published = fleet.drain().await;
    let (lost, duplicates, _) = losses(&fleet.log, published);
    let overlaps = overlapping(&fleet.log, "c", paused_at);
    println!(
        "paused {} ms (taken over after {} ms): published {published}, lost {lost}, \
         duplicates {duplicates}, overlapping deliveries {overlaps}",
        resumed - paused_at,
        taken - paused_at
    );
    assert_eq!(overlaps, 0, "a shard was read by two instances at once");
    assert_eq!(lost, 0);
    for child in [a, b, c] {
        child.stop();
    }
    fleet.clean().await;
}
