//! A Redis outage under load: three instances lease the shards of a 4-shard stream in the test's
//! own `redis-server`, which is stopped for 10 s and started again, empty. The consumers pause
//! instead of crashing, nothing is handled by two instances at once, everything resumes, and
//! nothing is lost.

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
use mq_kinesis::{KinesisOptions, RedisLeaseStore};
use redis_server::RedisServer;

const OUTAGE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_ten_seconds_pauses_and_resumes_without_overlap_or_loss() {
    let test = "redis_outage";
    let Some(mut redis) = RedisServer::start_or_skip(test).await else {
        return;
    };
    let stream = "fleet-redis-outage";
    let emu = Emulator::with_stream(stream, 4).await;
    let q = QueueName::new(stream).unwrap();
    let log = Log::default();
    // handlers take a little time, so batches are in flight when Redis goes
    log.set_handler_delay(Duration::from_millis(20));
    let mut instances = Vec::new();
    for id in ["a", "b", "c"] {
        let store = RedisLeaseStore::connect(&redis.url(), "mq").await.unwrap();
        instances.push(Instance::spawn(
            emu.endpoint.clone(),
            KinesisOptions::new(Arc::new(store)).instance_id(id),
            q.clone(),
            log.handler(id),
            fleet_options(),
        ));
    }
    let observer = RedisLeaseStore::connect(&redis.url(), "mq").await.unwrap();
    wait_owners(
        &observer,
        stream,
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

    redis.stop().await;
    let down = Instant::now();
    let at_stop = log.distinct();
    tokio::time::sleep(OUTAGE).await;
    let during = log.distinct() - at_stop;
    redis.restart().await;
    let up = Instant::now();
    println!(
        "Redis down for {:?}; {during} messages handled while it was down (leases still valid)",
        up.duration_since(down)
    );

    // everyone is back: leases taken again in the empty Redis
    let observer = RedisLeaseStore::connect(&redis.url(), "mq").await.unwrap();
    let took = wait_owners(
        &observer,
        stream,
        Duration::from_secs(60),
        "leases again",
        |o| counts(o).iter().sum::<usize>() == 4,
    )
    .await;
    println!("all 4 shards leased again {took:?} after Redis came back");
    let l = log.clone();
    let seen = log.distinct();
    eventually(Duration::from_secs(60), "load flowing again", move || {
        l.distinct() > seen + 500
    })
    .await;
    let published = publisher.stop().await;
    wait_all(&log, published, Duration::from_secs(90)).await;

    let lost = published - log.distinct() as u64;
    let overlaps = log.overlaps();
    // This Redis keeps nothing, so its checkpoints are gone and every shard is read again from
    // the start: the duplicates are what was handled before the outage. `DurableLeaseStore`
    // keeps checkpoints through a wipe (see consumer_redis_wipe).
    println!(
        "published {published}, lost {lost}, duplicates {} (re-read after the empty restart), \
         overlapping batches on one shard {overlaps}",
        log.duplicates()
    );
    assert_eq!(lost, 0);
    assert_eq!(overlaps, 0, "a shard was handled by two instances at once");
    assert!(
        log.order_violations().is_empty(),
        "{:?}",
        log.order_violations()
    );
    for i in instances {
        tokio::task::spawn_blocking(move || i.stop()).await.unwrap();
    }
}
