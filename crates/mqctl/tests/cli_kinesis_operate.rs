//! `mqctl kinesis checkpoint set|advance` and `mqctl kinesis lease release --force`, run as the
//! real binary against an embedded Kinesis emulator, the real Redis and consumers running in this
//! process (`KinesisQueue` with a `RedisLeaseStore`); one case with the durable checkpoints on
//! PostgreSQL (`--checkpoint-url`).

#[path = "common/kinesis.rs"]
mod common;

use std::cmp::Ordering;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use common::Emulator;
use mq::backend::compare_sequence_numbers;
use mq::kinesis::{
    CheckpointOutcome, KinesisOptions, KinesisQueue, Lease, LeaseState, LeaseStore, RedisLeaseStore,
};
use mq::{
    Batch, CommonOptions, ConsumerHandle, DispatchMode, HandlerContext, LifecycleDispatcher,
    MessageQueue, QueueName, async_trait, handler_fn,
};
use mq_core::testkit::{RecordingObserver, eventually, fast_options, service_url};
use serde_json::Value;

const SHARD: &str = "shardId-000000000000";

/// The emulator with a client for it, the Redis lease store under a key prefix of the test's own.
struct Env {
    emulator: Emulator,
    redis_url: String,
    prefix: String,
    leases: RedisLeaseStore,
}

impl Env {
    /// `None` (after saying why) when Redis is not configured; panics instead under
    /// `MQ_REQUIRE_SERVICES=1`.
    async fn start(test: &str, stream: &str) -> Option<Env> {
        let redis_url = match service_url("REDIS_URL") {
            Ok(u) => u,
            Err(reason) => {
                eprintln!("skipping {test}: {reason}");
                return None;
            }
        };
        let emulator = Emulator::start().await;
        emulator.create_stream(stream, 1).await;
        let prefix = format!("mqctl-{test}-{}", std::process::id());
        let leases = RedisLeaseStore::connect(&redis_url, prefix.clone())
            .await
            .expect("redis");
        Some(Env {
            emulator,
            redis_url,
            prefix,
            leases,
        })
    }

    /// Runs `mqctl kinesis <args>` against this environment, stdin a pipe (no terminal).
    async fn mqctl(&self, args: &[&str]) -> std::process::Output {
        let all =
            common::kinesis_args(args, &self.redis_url, &self.prefix, &self.emulator.endpoint);
        tokio::task::spawn_blocking(move || {
            let out = common::mqctl(&all)
                .env_remove("MQ_CHECKPOINT_URL")
                .write_stdin("y\n")
                .output()
                .expect("run mqctl");
            eprintln!(
                "$ mqctl {}\n{}{}",
                all.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            out
        })
        .await
        .expect("mqctl thread")
    }

    /// Runs `mqctl kinesis <args>`, expects success and parses its JSON output.
    async fn mqctl_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.mqctl(&args).await;
        assert!(out.status.success(), "mqctl {args:?} failed");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Puts one record per payload and returns their sequence numbers, in order.
    async fn put(&self, stream: &str, from: usize, n: usize) -> Vec<String> {
        let mut seqs = Vec::new();
        for i in from..from + n {
            let data = serde_json::json!({ "type": "t", "payload": { "i": i } });
            let out = self
                .emulator
                .client
                .put_record()
                .stream_name(stream)
                .partition_key("k")
                .data(Blob::new(serde_json::to_vec(&data).expect("json")))
                .send()
                .await
                .expect("put record");
            seqs.push(out.sequence_number().to_owned());
        }
        seqs
    }

    /// A queue instance named `id` consuming `stream` from the shared Redis lease store.
    async fn consumer(
        &self,
        stream: &str,
        id: &str,
        store: Arc<dyn LeaseStore>,
        observer: Arc<RecordingObserver>,
        handler: Arc<dyn mq::Handler>,
    ) -> (KinesisQueue, ConsumerHandle) {
        let q = QueueName::new(stream).expect("queue name");
        let queue = KinesisQueue::with_client(
            self.emulator.client.clone(),
            KinesisOptions::new(store)
                .instance_id(id)
                .discovery_interval(Duration::from_millis(50))
                .common(
                    CommonOptions::default().lifecycle(
                        LifecycleDispatcher::builder()
                            .observer(observer)
                            .mode(DispatchMode::Sync)
                            .build(),
                    ),
                ),
        );
        queue.register(&q).await.expect("register");
        let handle = queue
            .consume(
                &q,
                handler,
                fast_options().lease_duration(Duration::from_secs(3)),
            )
            .await
            .expect("consume");
        (queue, handle)
    }

    async fn state(&self, stream: &str) -> LeaseState {
        self.leases.state(stream, SHARD).await.expect("state")
    }

    /// Deletes every Redis key of the test's prefix.
    async fn clean(self) {
        common::delete_keys(&self.leases, &self.prefix).await;
    }
}

/// `checkpoint <action>` for `shard` of `stream` at `sequence`, then `extra`.
fn checkpoint_args<'a>(
    action: &'a str,
    stream: &'a str,
    shard: &'a str,
    sequence: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "checkpoint",
        action,
        "--stream",
        stream,
        "--shard",
        shard,
        "--sequence",
        sequence,
    ];
    args.extend_from_slice(extra);
    args
}

/// `lease release` for the shard of `stream`, then `flags`.
fn release_args<'a>(stream: &'a str, flags: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["lease", "release", "--stream", stream, "--shard", SHARD];
    args.extend_from_slice(flags);
    args
}

/// Records the sequence numbers delivered (message ids are `<shard>:<sequence number>`), each
/// with whether the operator command had returned when it was delivered.
#[derive(Debug, Default)]
struct Deliveries {
    moved: AtomicBool,
    seen: Mutex<Vec<(String, bool)>>,
}

impl Deliveries {
    fn record(&self, batch: &Batch) {
        let moved = self.moved.load(AtomicOrdering::SeqCst);
        let mut seen = self.seen.lock().expect("lock");
        for m in batch.iter() {
            let seq =
                m.id.as_str()
                    .rsplit(':')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            seen.push((seq, moved));
        }
    }

    fn after_move(&self) -> Vec<String> {
        let seen = self.seen.lock().expect("lock");
        seen.iter()
            .filter(|(_, moved)| *moved)
            .map(|(s, _)| s.clone())
            .collect()
    }

    fn all(&self) -> Vec<String> {
        let seen = self.seen.lock().expect("lock");
        seen.iter().map(|(s, _)| s.clone()).collect()
    }
}

/// A handler that records deliveries and, while `hold` is set, keeps its first batch (ignoring
/// cancellation, as a slow handler would), so a test can act while a consumer is mid-batch.
fn holding_handler(
    deliveries: Arc<Deliveries>,
    in_handler: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
) -> Arc<dyn mq::Handler> {
    Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let (deliveries, in_handler, hold) = (deliveries.clone(), in_handler.clone(), hold.clone());
        async move {
            deliveries.record(&batch);
            in_handler.store(true, AtomicOrdering::SeqCst);
            while hold.load(AtomicOrdering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }))
}

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).expect("time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_name_the_value_and_change_nothing() {
    let stream = "mqctl-refusals";
    let Some(env) = Env::start("refusals", stream).await else {
        return;
    };
    let ttl = Duration::from_secs(60);
    let lease = env
        .leases
        .acquire(stream, SHARD, "owner-a", ttl)
        .await
        .expect("acquire")
        .expect("free");
    assert_eq!(
        env.leases
            .checkpoint(&lease, "100")
            .await
            .expect("checkpoint"),
        CheckpointOutcome::Advanced
    );
    let before = env.state(stream).await;

    let refused = |out: &std::process::Output, needles: &[&str]| {
        assert!(!out.status.success(), "expected a refusal");
        let err = String::from_utf8_lossy(&out.stderr);
        for n in needles {
            assert!(err.contains(n), "{n:?} not in {err}");
        }
    };
    let set = |seq: &'static str| {
        vec![
            "checkpoint",
            "set",
            "--stream",
            stream,
            "--shard",
            SHARD,
            "--sequence",
            seq,
            "--yes",
        ]
    };
    let out = env.mqctl(&set("12ab")).await;
    refused(&out, &["--sequence", "\"12ab\"", "decimal digits"]);
    let long: &'static str = "1".repeat(129).leak();
    let out = env.mqctl(&set(long)).await;
    refused(&out, &["--sequence", "1 to 128 decimal digits"]);

    let out = env
        .mqctl(&checkpoint_args(
            "advance",
            stream,
            "shardId-000000000009",
            "200",
            &["--yes"],
        ))
        .await;
    refused(&out, &["\"shardId-000000000009\"", "no such shard", SHARD]);
    let out = env
        .mqctl(&checkpoint_args("advance", stream, SHARD, "99", &["--yes"]))
        .await;
    refused(&out, &["99", "not after the current checkpoint 100"]);

    let out = env.mqctl(&release_args(stream, &["--yes"])).await;
    refused(&out, &["without --force", "fences the owner"]);

    // no --yes and no terminal (stdin is a pipe, even one that says "y")
    let out = env
        .mqctl(&checkpoint_args("set", stream, SHARD, "500", &[]))
        .await;
    refused(&out, &["without a terminal", "--yes"]);
    let out = env.mqctl(&release_args(stream, &["--force"])).await;
    refused(&out, &["without a terminal", "--yes"]);

    assert_eq!(env.state(stream).await, before, "nothing changed");

    // a finished shard cannot be advanced
    assert!(env.leases.finish(&lease).await.expect("finish"));
    let out = env
        .mqctl(&checkpoint_args(
            "advance",
            stream,
            SHARD,
            "200",
            &["--yes"],
        ))
        .await;
    refused(&out, &["finished", SHARD]);
    assert_eq!(env.state(stream).await.checkpoint.as_deref(), Some("100"));
    env.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_shows_a_running_consumer_and_advance_skips_records() {
    let stream = "mqctl-advance";
    let Some(env) = Env::start("advance", stream).await else {
        return;
    };
    let instance = format!("advance-a-{}", std::process::id());
    let batch1 = env.put(stream, 0, 3).await;
    let deliveries = Arc::new(Deliveries::default());
    let (in_handler, hold) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(true)),
    );
    let observer = Arc::new(RecordingObserver::default());
    let (_queue, consumer) = env
        .consumer(
            stream,
            &instance,
            Arc::new(env.leases.clone()),
            observer.clone(),
            holding_handler(deliveries.clone(), in_handler.clone(), hold.clone()),
        )
        .await;
    eventually(
        Duration::from_secs(10),
        "the consumer handles batch 1",
        || in_handler.load(AtomicOrdering::SeqCst),
    )
    .await;
    // the consumer is mid-batch; batch 2 arrives behind it
    let batch2 = env.put(stream, 3, 6).await;

    // inspect the running consumer's lease
    let status = env.mqctl_json(&["status", "--stream", stream]).await;
    assert_eq!(status["checkpoints"], "redis");
    assert!(
        status["live_instances"]
            .as_array()
            .expect("instances")
            .contains(&Value::from(instance.clone())),
        "{status}"
    );
    let shard = &status["shards"][0];
    assert_eq!(shard["shard"], SHARD);
    assert_eq!(shard["owner"], instance.as_str(), "{status}");
    assert!(shard["epoch"].as_u64().expect("epoch") >= 1, "{status}");
    assert_eq!(shard["live"], true, "{status}");
    assert!(
        shard["lease_expires_at_ms"].as_u64().expect("expiry") > now_ms(),
        "lease not expired: {status}"
    );

    // skip batch 1 and the first three records of batch 2
    let target = batch2[2].clone();
    let change = env
        .mqctl_json(&checkpoint_args(
            "advance",
            stream,
            SHARD,
            &target,
            &["--yes"],
        ))
        .await;
    deliveries.moved.store(true, AtomicOrdering::SeqCst);
    let moved_at = Instant::now();
    assert_eq!(change["action"], "checkpoint advance");
    assert_eq!(change["before"]["owner"], instance.as_str(), "{change}");
    assert_eq!(change["after"]["owner"], Value::Null, "{change}");
    let epoch = change["before"]["epoch"].as_u64().expect("epoch");
    assert_eq!(
        change["after"]["epoch"].as_u64(),
        Some(epoch + 1),
        "{change}"
    );
    assert_eq!(change["after"]["checkpoint"], target.as_str());

    // let the held batch finish: its checkpoint is fenced, the shard is acquired again and read
    // after the new checkpoint
    hold.store(false, AtomicOrdering::SeqCst);
    let expected: Vec<String> = batch2[3..].to_vec();
    eventually(
        Duration::from_secs(20),
        "the records after the new checkpoint arrive",
        || {
            let after = deliveries.after_move();
            expected.iter().all(|s| after.contains(s))
        },
    )
    .await;
    eprintln!(
        "records after the checkpoint delivered {:?} after the command returned",
        moved_at.elapsed()
    );
    for seq in deliveries.after_move() {
        assert_eq!(
            compare_sequence_numbers(&seq, &target),
            Ordering::Greater,
            "{seq} (at or before the new checkpoint {target}) delivered after the move"
        );
    }
    for seq in batch1.iter().chain(&batch2[..3]) {
        assert!(
            !deliveries.after_move().contains(seq),
            "{seq} delivered after the move"
        );
    }
    assert!(
        deliveries.all().contains(&batch1[0]),
        "batch 1 was delivered before the move"
    );
    eventually(
        Duration::from_secs(10),
        "the consumer checkpoints batch 2",
        || observer.count("checkpoint") >= 1,
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = env.state(stream).await;
        if st.checkpoint.as_deref() == batch2.last().map(String::as_str) {
            assert!(
                st.epoch > epoch + 1,
                "acquired again with a new epoch: {st:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never checkpointed: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    consumer.stop().await;
    env.clean().await;
}

/// Delegates to a Redis lease store and keeps every lease it hands out, so the test can write a
/// checkpoint with an old owner's lease.
#[derive(Debug)]
struct Capture {
    inner: RedisLeaseStore,
    leases: Mutex<Vec<Lease>>,
}

#[async_trait]
impl LeaseStore for Capture {
    async fn acquire_above(
        &self,
        s: &str,
        sh: &str,
        o: &str,
        ttl: Duration,
        floor: u64,
    ) -> mq::kinesis::Result<Option<Lease>> {
        let l = self.inner.acquire_above(s, sh, o, ttl, floor).await?;
        if let Some(l) = &l {
            self.leases.lock().expect("lock").push(l.clone());
        }
        Ok(l)
    }
    async fn force_release(&self, s: &str, sh: &str) -> mq::kinesis::Result<LeaseState> {
        self.inner.force_release(s, sh).await
    }
    async fn set_checkpoint(
        &self,
        s: &str,
        sh: &str,
        seq: &str,
    ) -> mq::kinesis::Result<LeaseState> {
        self.inner.set_checkpoint(s, sh, seq).await
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> mq::kinesis::Result<bool> {
        self.inner.renew(lease, ttl).await
    }
    async fn checkpoint(&self, lease: &Lease, seq: &str) -> mq::kinesis::Result<CheckpointOutcome> {
        self.inner.checkpoint(lease, seq).await
    }
    async fn release(&self, lease: &Lease) -> mq::kinesis::Result<bool> {
        self.inner.release(lease).await
    }
    async fn finish(&self, lease: &Lease) -> mq::kinesis::Result<bool> {
        self.inner.finish(lease).await
    }
    async fn state(&self, s: &str, sh: &str) -> mq::kinesis::Result<LeaseState> {
        self.inner.state(s, sh).await
    }
    async fn leases(&self, s: &str) -> mq::kinesis::Result<Vec<LeaseState>> {
        self.inner.leases(s).await
    }
    async fn record_failure(&self, s: &str, sh: &str, c: &str) -> mq::kinesis::Result<u32> {
        self.inner.record_failure(s, sh, c).await
    }
    async fn clear_failures(&self, s: &str, sh: &str) -> mq::kinesis::Result<()> {
        self.inner.clear_failures(s, sh).await
    }
    async fn heartbeat(&self, s: &str, i: &str, ttl: Duration) -> mq::kinesis::Result<()> {
        self.inner.heartbeat(s, i, ttl).await
    }
    async fn live_instances(&self, s: &str) -> mq::kinesis::Result<Vec<String>> {
        self.inner.live_instances(s).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_release_hands_the_shard_to_another_instance_and_fences_the_owner() {
    let stream = "mqctl-release";
    let Some(env) = Env::start("release", stream).await else {
        return;
    };
    let (a_id, b_id) = (
        format!("release-a-{}", std::process::id()),
        format!("release-b-{}", std::process::id()),
    );
    let seqs = env.put(stream, 0, 5).await;
    let store = Arc::new(Capture {
        inner: env.leases.clone(),
        leases: Mutex::default(),
    });
    let (a_seen, a_in, a_hold) = (
        Arc::new(Deliveries::default()),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(true)),
    );
    let obs_a = Arc::new(RecordingObserver::default());
    let (_qa, consumer_a) = env
        .consumer(
            stream,
            &a_id,
            store.clone(),
            obs_a.clone(),
            holding_handler(a_seen, a_in.clone(), a_hold.clone()),
        )
        .await;
    eventually(Duration::from_secs(10), "A handles its first batch", || {
        a_in.load(AtomicOrdering::SeqCst)
    })
    .await;
    let a_lease = store
        .leases
        .lock()
        .expect("lock")
        .iter()
        .find(|l| l.owner == a_id)
        .cloned()
        .expect("A's lease");

    let b_seen = Arc::new(Deliveries::default());
    let obs_b = Arc::new(RecordingObserver::default());
    let (_qb, consumer_b) = env
        .consumer(
            stream,
            &b_id,
            Arc::new(env.leases.clone()),
            obs_b.clone(),
            holding_handler(
                b_seen.clone(),
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            ),
        )
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !env
        .leases
        .live_instances(stream)
        .await
        .expect("instances")
        .contains(&b_id)
    {
        assert!(tokio::time::Instant::now() < deadline, "B never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        env.state(stream).await.owner.as_deref(),
        Some(a_id.as_str())
    );

    let change = env
        .mqctl_json(&release_args(stream, &["--force", "--yes"]))
        .await;
    let released = Instant::now();
    assert_eq!(change["action"], "lease release");
    assert_eq!(change["before"]["owner"], a_id.as_str(), "{change}");
    assert_eq!(change["before"]["live"], true, "{change}");
    assert_eq!(change["after"]["owner"], Value::Null, "{change}");
    assert_eq!(
        change["after"]["epoch"].as_u64(),
        Some(a_lease.epoch + 1),
        "{change}"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let taken = loop {
        let st = env.state(stream).await;
        if st.owner.as_deref() == Some(b_id.as_str()) {
            break st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B did not take the shard within 10 s: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!(
        "B took the shard {:?} after the release returned (epoch {})",
        released.elapsed(),
        taken.epoch
    );
    assert!(taken.epoch > a_lease.epoch + 1);

    // A's batch ends now: A learns it lost the lease, and its checkpoint write is fenced
    a_hold.store(false, AtomicOrdering::SeqCst);
    eventually(Duration::from_secs(10), "A reports lease_lost", || {
        obs_a.count("lease_lost") >= 1
    })
    .await;
    assert_eq!(
        env.leases
            .checkpoint(&a_lease, seqs.last().expect("seq"))
            .await
            .expect("checkpoint"),
        CheckpointOutcome::Fenced
    );
    eventually(Duration::from_secs(20), "B delivers all 5 records", || {
        let all = b_seen.all();
        seqs.iter().all(|s| all.contains(s))
    })
    .await;
    assert_eq!(obs_b.count("lease_lost"), 0);
    assert_eq!(obs_a.count("checkpoint"), 0, "A never checkpointed");
    consumer_b.stop().await;
    consumer_a.stop().await;
    env.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkpoint_set_writes_the_durable_store_and_status_reads_it() {
    let stream = "mqctl-durable";
    let pg = match service_url("MQ_TEST_POSTGRES_URL") {
        Ok(u) => u,
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let Some(env) = Env::start("durable", stream).await else {
        return;
    };
    let table = format!("mqctl_ckpt_{}", std::process::id());
    // a change confirmed and written to the durable store; status read from it
    let durable_yes = [
        "--yes",
        "--checkpoint-url",
        &pg,
        "--checkpoint-table",
        &table,
    ];
    let durable_status = [
        "status",
        "--stream",
        stream,
        "--checkpoint-url",
        &pg,
        "--checkpoint-table",
        &table,
    ];
    let seqs = env.put(stream, 0, 3).await;
    let target = seqs[1].clone();
    let change = env
        .mqctl_json(&checkpoint_args(
            "set",
            stream,
            SHARD,
            &target,
            &durable_yes,
        ))
        .await;
    assert_eq!(change["after"]["checkpoint"], target.as_str(), "{change}");
    assert!(
        change["checkpoints"]
            .as_str()
            .expect("checkpoints")
            .contains(&table),
        "{change}"
    );

    let pool = sqlx::PgPool::connect(&pg).await.expect("postgres");
    let row: (Option<String>, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT sequence_number, epoch FROM {table} WHERE stream = $1 AND shard = $2"
    )))
    .bind(stream)
    .bind(SHARD)
    .fetch_one(&pool)
    .await
    .expect("the checkpoint row");
    assert_eq!(row.0.as_deref(), Some(target.as_str()));
    assert!(row.1 >= 1, "the fence was raised: {row:?}");

    // Redis forgets everything: the durable checkpoint is still what status shows
    assert!(common::delete_keys(&env.leases, &env.prefix).await > 0);
    let status = env.mqctl_json(&durable_status).await;
    let shard = &status["shards"][0];
    assert_eq!(shard["shard"], SHARD);
    assert_eq!(shard["checkpoint"], target.as_str(), "{status}");
    let without = env.mqctl_json(&["status", "--stream", stream]).await;
    assert_eq!(without["shards"][0]["checkpoint"], Value::Null, "{without}");

    // set moves backwards too; the human output is a before/after table
    let out = env
        .mqctl(&checkpoint_args(
            "set",
            stream,
            SHARD,
            &seqs[0],
            &durable_yes,
        ))
        .await;
    assert!(out.status.success());
    let human = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        human
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row in {human}"))
            .to_owned()
    };
    assert!(line("before").contains(&target), "{human}");
    assert!(line("after").contains(&seqs[0]), "{human}");
    let status = env.mqctl_json(&durable_status).await;
    assert_eq!(
        status["shards"][0]["checkpoint"],
        seqs[0].as_str(),
        "{status}"
    );
    // the lease store's copy is written too
    let without = env.mqctl_json(&["status", "--stream", stream]).await;
    assert_eq!(
        without["shards"][0]["checkpoint"],
        seqs[0].as_str(),
        "{without}"
    );

    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .expect("drop");
    env.clean().await;
}
