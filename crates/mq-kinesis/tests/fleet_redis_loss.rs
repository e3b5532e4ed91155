//! Redis losing data under load, with three instances on a 4-shard stream and the test's own
//! `redis-server`: restarted empty at once (no persistence), and restarted from a snapshot taken
//! a second earlier, during which one instance left and its shards changed hands (a failover to
//! a replica one second behind). Each with the durable lease store (leases in Redis, checkpoints
//! and the epoch fence in PostgreSQL), where no shard may be handled by two instances at once
//! and nothing may be lost, and with Redis alone, whose behaviour is printed (and documented in
//! the Redis outage runbook): nothing is lost either, but the checkpoints go back with the data,
//! so records are delivered again.

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

use std::sync::Arc;
use std::time::{Duration, Instant};

use emulator::Emulator;
use fleet::{Log, Publisher, counts, fleet_options, wait_all, wait_owners};
use instance::Instance;
use mq_core::QueueName;
use mq_core::testkit::eventually;
use mq_kinesis::{DurableLeaseStore, KinesisOptions, LeaseStore, RedisLeaseStore};
use redis_server::RedisServer;

const SHARDS: usize = 4;
/// How long a handler takes: batches are in flight when Redis loses its data.
const HANDLER: Duration = Duration::from_millis(150);
/// How much of Redis's recent history the failover loses.
const LOST_WINDOW: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// killed and started again at once, empty
    EmptyRestart,
    /// killed and started again from a snapshot taken a second earlier, during which an
    /// instance left and its shards changed hands
    LastSecondLost,
}

/// The lease store of one instance: Redis alone, or Redis with PostgreSQL checkpoints.
async fn store(redis: &RedisServer, durable_test: Option<&str>) -> Arc<dyn LeaseStore> {
    let leases = Arc::new(RedisLeaseStore::connect(&redis.url(), "mq").await.unwrap());
    match durable_test {
        Some(test) => {
            let checkpoints = durable::postgres_again(test).await.unwrap();
            Arc::new(DurableLeaseStore::new(leases, checkpoints))
        }
        None => leases,
    }
}

struct Outcome {
    published: u64,
    lost: u64,
    duplicates: usize,
    overlaps: usize,
    max_batch: usize,
}

async fn run(test: &str, fault: Fault, durable: bool) -> Option<Outcome> {
    let durable_test = if durable {
        // made (and emptied) once; every instance opens its own pool on it
        durable::postgres(test).await?;
        Some(test)
    } else {
        None
    };
    let mut redis = RedisServer::start_or_skip(test).await?;
    let stream = test.replace('_', "-");
    let emu = Emulator::with_stream(&stream, SHARDS as i32).await;
    let q = QueueName::new(&stream).unwrap();
    let log = Log::default();
    log.set_handler_delay(HANDLER);
    let mut instances = Vec::new();
    for id in ["a", "b", "c"] {
        let options = KinesisOptions::new(store(&redis, durable_test).await).instance_id(id);
        instances.push(Instance::spawn(
            emu.endpoint.clone(),
            options,
            q.clone(),
            log.handler(id),
            fleet_options(),
        ));
    }
    let observer = RedisLeaseStore::connect(&redis.url(), "mq").await.unwrap();
    wait_owners(
        &observer,
        &stream,
        Duration::from_secs(20),
        "balanced",
        |o| counts(o) == [2, 1, 1],
    )
    .await;
    let publisher = Publisher::start(emu.client(), &q, 64, 16, Duration::from_millis(25)).await;
    let l = log.clone();
    eventually(Duration::from_secs(30), "load flowing", move || {
        l.distinct() > 500
    })
    .await;

    let before = log.distinct();
    match fault {
        Fault::EmptyRestart => {
            redis.restart().await;
            println!("{test}: Redis restarted empty with {before} messages handled");
        }
        Fault::LastSecondLost => {
            redis.snapshot().await;
            let snapshot = Instant::now();
            // "c" leaves: its shards change hands after the snapshot, so the failover forgets
            // the new owners' leases while they read
            let c = instances.pop().expect("c");
            tokio::task::spawn_blocking(move || c.stop()).await.unwrap();
            wait_owners(
                &observer,
                &stream,
                Duration::from_secs(20),
                "c's shards taken by a and b",
                |o| !o.contains_key("c") && counts(o).iter().sum::<usize>() == SHARDS,
            )
            .await;
            let handed = snapshot.elapsed();
            if let Some(rest) = LOST_WINDOW.checked_sub(handed) {
                tokio::time::sleep(rest).await;
            }
            redis.restore_snapshot().await;
            println!(
                "{test}: Redis restarted from a snapshot {:?} old ({handed:?} after it, every \
                 shard of the instance that left had a new owner), {before} messages handled",
                snapshot.elapsed()
            );
        }
    }
    let restarted = Instant::now();

    let observer = RedisLeaseStore::connect(&redis.url(), "mq").await.unwrap();
    let took = wait_owners(
        &observer,
        &stream,
        Duration::from_secs(60),
        "leases again",
        |o| {
            counts(o).iter().sum::<usize>() == SHARDS
                && (matches!(fault, Fault::EmptyRestart) || !o.contains_key("c"))
        },
    )
    .await;
    println!(
        "{test}: every shard leased by a live instance again {took:?} after the restart \
         ({:?} since)",
        restarted.elapsed()
    );
    let l = log.clone();
    let seen = log.distinct();
    eventually(Duration::from_secs(60), "load flowing again", move || {
        l.distinct() > seen + 500
    })
    .await;
    let published = publisher.stop().await;
    wait_all(&log, published, Duration::from_secs(90)).await;
    for i in instances {
        tokio::task::spawn_blocking(move || i.stop()).await.unwrap();
    }
    let outcome = Outcome {
        published,
        lost: published.saturating_sub(log.distinct() as u64),
        duplicates: log.duplicates(),
        overlaps: log.overlaps(),
        max_batch: log.max_batch(),
    };
    println!(
        "{test}: {} store, {fault:?}: published {}, lost {}, duplicates {}, overlapping batches \
         on one shard {} (largest batch {})",
        if durable {
            "durable (Redis + PostgreSQL)"
        } else {
            "Redis-only"
        },
        outcome.published,
        outcome.lost,
        outcome.duplicates,
        outcome.overlaps,
        outcome.max_batch
    );
    for (a, b) in log.overlapping_pairs() {
        println!(
            "{test}: overlap on {}: {} from {:?} to {:?}, {} from {:?} to {:?} after the restart",
            a.shard,
            a.instance,
            a.start.checked_duration_since(restarted),
            a.end.checked_duration_since(restarted),
            b.instance,
            b.start.checked_duration_since(restarted),
            b.end.checked_duration_since(restarted),
        );
    }
    assert!(
        log.order_violations().is_empty(),
        "{:?}",
        log.order_violations()
    );
    Some(outcome)
}

/// The durable store's promise: no overlap, nothing lost, duplicates only from the batches in
/// flight (a batch per shard, and one more per shard that changed hands).
fn assert_durable(test: &str, o: &Outcome) {
    let bound = 2 * SHARDS * o.max_batch;
    println!(
        "target {test} overlapping batches: {} (goal <= 0) {}",
        o.overlaps,
        met(o.overlaps == 0)
    );
    println!(
        "target {test} lost: {} (goal <= 0) {}",
        o.lost,
        met(o.lost == 0)
    );
    println!(
        "target {test} duplicates: {} (goal <= {bound}) {}",
        o.duplicates,
        met(o.duplicates <= bound)
    );
    assert_eq!(
        o.overlaps, 0,
        "a shard was handled by two instances at once"
    );
    assert_eq!(o.lost, 0);
    assert!(
        o.duplicates <= bound,
        "{} duplicates > {bound}",
        o.duplicates
    );
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_store_redis_restarted_empty_no_overlap_nothing_lost() {
    let test = "loss_durable_empty";
    if let Some(o) = run(test, Fault::EmptyRestart, true).await {
        assert_durable(test, &o);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_store_redis_failover_losing_a_second_no_overlap_nothing_lost() {
    let test = "loss_durable_failover";
    if let Some(o) = run(test, Fault::LastSecondLost, true).await {
        assert_durable(test, &o);
    }
}

/// Redis alone restarted empty: the checkpoints are gone with everything else, so every shard is
/// read again from its start (duplicates), and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_alone_restarted_empty_reads_again_and_loses_nothing() {
    let test = "loss_redis_empty";
    if let Some(o) = run(test, Fault::EmptyRestart, false).await {
        assert_eq!(o.lost, 0);
        assert!(
            o.duplicates > 0,
            "the checkpoints were lost, so records are delivered again"
        );
    }
}

/// Redis alone after a failover that lost a second: the checkpoints of that second are gone
/// (those records are delivered again) and nothing is lost; overlaps are printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_alone_failover_losing_a_second_loses_nothing() {
    let test = "loss_redis_failover";
    if let Some(o) = run(test, Fault::LastSecondLost, false).await {
        assert_eq!(o.lost, 0);
    }
}
