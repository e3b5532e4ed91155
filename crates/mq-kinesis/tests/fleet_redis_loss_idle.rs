//! Redis losing a lease while its shard is idle, with the durable lease store (leases in the
//! test's own `redis-server`, checkpoints and the epoch fence in PostgreSQL): three instances on
//! a 3-shard stream, one leaves and its shard moves to another, and Redis loses that
//! acquisition only (a failover to a replica that had the release but not the acquisition, with
//! every client still connected: no call fails, so nothing makes the owner confirm its lease).
//! Its membership lives on; with nothing published to the shard it has no checkpoint to write,
//! so only the durable epoch can tell it that a third instance took the shard after the
//! recovery wait. Then records arrive on that shard: no batch may be handled by the forgotten
//! owner, and none by two instances at once.

#[path = "common/durable.rs"]
mod durable;
#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/instance.rs"]
mod instance;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use emulator::Emulator;
use fleet::{Log, counts, fleet_options, publisher_queue, wait_all, wait_owners};
use instance::Instance;
use mq_core::{MessageQueue, NewMessage, QueueName};
use mq_kinesis::{DurableLeaseStore, KinesisOptions, LeaseStore, RedisLeaseStore};
use redis_server::RedisServer;

const SHARDS: i32 = 3;
/// How long a handler takes, so batches of two instances on one shard would overlap in time.
const HANDLER: Duration = Duration::from_millis(150);
/// Rounds of records published to the idle shard once its new owner took it, one every 25 ms
/// (about 3 s of load).
const ROUNDS: u64 = 100;

/// Partition keys by the shard they land on: `PutRecord` on a probe stream of the same shard
/// count (Kinesis splits a new stream's hash key space the same way whatever its name).
async fn keys_by_shard(emu: &Emulator, stream: &str) -> BTreeMap<String, Vec<String>> {
    let probe = format!("{stream}-probe");
    emu.create_stream(&probe, SHARDS).await;
    let c = emu.client();
    let ranges = |s: &aws_sdk_kinesis::types::Shard| {
        s.hash_key_range().map(|r| {
            (
                r.starting_hash_key().to_owned(),
                r.ending_hash_key().to_owned(),
            )
        })
    };
    let listed = |name: String| {
        let c = c.clone();
        async move {
            let out = c.list_shards().stream_name(name).send().await.unwrap();
            out.shards()
                .iter()
                .map(|s| (s.shard_id().to_owned(), ranges(s)))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed(probe.clone()).await,
        listed(stream.to_owned()).await,
        "the probe stream has the same shards and hash key ranges"
    );
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..60 {
        let key = format!("k{i}");
        let put = c
            .put_record()
            .stream_name(&probe)
            .partition_key(&key)
            .data(Blob::new(b"probe".to_vec()))
            .send()
            .await
            .unwrap();
        out.entry(put.shard_id().to_owned()).or_default().push(key);
    }
    out
}

/// Publishes `rounds` rounds to `keys` only (so to one shard), a round every 25 ms; how many
/// records it published.
async fn publish_to(
    queue: mq_kinesis::KinesisQueue,
    q: QueueName,
    keys: Vec<String>,
    rounds: u64,
) -> u64 {
    for n in 0..rounds {
        let msgs: Vec<NewMessage> = keys
            .iter()
            .map(|key| {
                NewMessage::new("t", serde_json::json!({"key": key, "n": n}))
                    .partition_key(key.clone())
            })
            .collect();
        let report = queue.publish(&q, msgs).await.expect("publish");
        assert!(report.is_complete(), "{:?}", report.failed.first());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    rounds * keys.len() as u64
}

/// The shard whose owner `who` is, as `owners` says.
fn shard_of(owners: &BTreeMap<String, Vec<String>>, who: &str) -> Option<String> {
    owners.get(who).and_then(|s| s.first().cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_store_idle_shard_forgotten_by_redis_is_never_handled_twice() {
    let test = "loss_durable_idle";
    if durable::postgres(test).await.is_none() {
        return;
    }
    let Some(redis) = RedisServer::start_or_skip(test).await else {
        return;
    };
    let stream = test.replace('_', "-");
    let emu = Emulator::with_stream(&stream, SHARDS).await;
    let keys = keys_by_shard(&emu, &stream).await;
    let q = QueueName::new(&stream).unwrap();
    let log = Log::default();
    log.set_handler_delay(HANDLER);
    let mut instances = BTreeMap::new();
    for id in ["a", "b", "c"] {
        let leases = Arc::new(RedisLeaseStore::connect(&redis.url(), "mq").await.unwrap());
        let checkpoints = durable::postgres_again(test).await.unwrap();
        let options = KinesisOptions::new(Arc::new(DurableLeaseStore::new(leases, checkpoints)))
            .instance_id(id);
        instances.insert(
            id,
            Instance::spawn(
                emu.endpoint.clone(),
                options,
                q.clone(),
                log.handler(id),
                fleet_options(),
            ),
        );
    }
    let observer = RedisLeaseStore::connect(&redis.url(), "mq").await.unwrap();
    let balanced = |o: &BTreeMap<String, Vec<String>>| counts(o) == [1, 1, 1];
    wait_owners(
        &observer,
        &stream,
        Duration::from_secs(20),
        "balanced",
        balanced,
    )
    .await;
    let owners = fleet::owners(&observer, &stream).await;
    let idle = shard_of(&owners, "c").expect("c holds a shard");
    let idle_keys = keys.get(&idle).cloned().unwrap_or_default();
    assert!(!idle_keys.is_empty(), "no probe key landed on {idle}");

    // "c" leaves: its shard is released and taken by another instance, which has nothing to
    // read on it
    let c = instances.remove("c").expect("c");
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap();
    let moved = |o: &BTreeMap<String, Vec<String>>| {
        !o.contains_key("c") && o.values().any(|s| s.contains(&idle))
    };
    wait_owners(
        &observer,
        &stream,
        Duration::from_secs(20),
        "c's shard taken",
        moved,
    )
    .await;
    let held = observer.state(&stream, &idle).await.unwrap();
    let forgotten = held.owner.clone().expect("an owner");

    // Redis loses that acquisition, and only that (a failover to a replica that had the
    // release but not the acquisition; every client stays connected, no call fails): the
    // lease is back to what the release left, one epoch lower, and the stream's change count
    // is back to its value before
    let key = format!("mq:{{{stream}}}:lease:{idle}");
    let epoch = (held.epoch - 1).to_string();
    let args = [
        "HSET",
        &key,
        "owner",
        "",
        "expires",
        "0",
        "membership",
        "",
        "epoch",
        &epoch,
    ];
    assert_eq!(redis.command(&args).await, "0", "fields overwritten");
    let version = format!("mq:{{{stream}}}:version");
    redis.command(&["HINCRBY", &version, "v", "-1"]).await;
    let lost = Instant::now();
    println!(
        "{test}: {idle} moved from c to {forgotten} at epoch {}; Redis lost that acquisition",
        held.epoch
    );

    // the shard looks free in Redis: another instance takes it once the recovery wait (a
    // membership TTL) has passed
    let taken = |o: &BTreeMap<String, Vec<String>>| {
        o.iter()
            .any(|(owner, s)| owner != "c" && owner != &forgotten && s.contains(&idle))
    };
    let took = wait_owners(
        &observer,
        &stream,
        Duration::from_secs(60),
        "the idle shard taken by a third instance",
        taken,
    )
    .await;
    let takeover = Instant::now();
    println!(
        "{test}: {idle} taken by another instance {took:?} after the loss ({:?} since)",
        lost.elapsed()
    );

    // records arrive on the idle shard only
    let queue = publisher_queue(emu.client(), &q).await;
    let published = publish_to(queue, q.clone(), idle_keys, ROUNDS).await;
    wait_all(&log, published, Duration::from_secs(60)).await;
    for (_, i) in instances {
        tokio::task::spawn_blocking(move || i.stop()).await.unwrap();
    }

    let deliveries = log.deliveries();
    let stale = deliveries
        .iter()
        .filter(|d| d.shard == idle && d.instance == forgotten && d.start >= takeover)
        .count();
    let overlaps = log.overlaps();
    let lost = published.saturating_sub(log.distinct() as u64);
    println!(
        "{test}: published {published} to {idle}, lost {lost}, duplicates {}, batches handled \
         by the forgotten owner {forgotten} after the takeover {stale}, overlapping batches on \
         one shard {overlaps}",
        log.duplicates()
    );
    for (a, b) in log.overlapping_pairs() {
        println!(
            "{test}: overlap on {}: {} from {:?} to {:?}, {} from {:?} to {:?} after the takeover",
            a.shard,
            a.instance,
            a.start.checked_duration_since(takeover),
            a.end.checked_duration_since(takeover),
            b.instance,
            b.start.checked_duration_since(takeover),
            b.end.checked_duration_since(takeover),
        );
    }
    println!(
        "target {test} overlapping batches: {overlaps} (goal <= 0) {}",
        if overlaps == 0 { "met" } else { "NOT met" }
    );
    assert_eq!(
        stale, 0,
        "the owner Redis forgot handled batches after another instance took the shard"
    );
    assert_eq!(overlaps, 0, "a shard was handled by two instances at once");
    assert_eq!(lost, 0);
}
