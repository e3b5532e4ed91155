//! One instance lists the shards for the fleet: three instances share a 4-shard stream through
//! the test's own Redis, each with a Kinesis client that counts its `ListShards` calls. At steady
//! state the fleet lists about as often as one instance would; after the leader is killed
//! another one leads, and a split made after that is still picked up (the children are read).

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/instance.rs"]
mod instance;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use emulator::{Emulator, RequestCounter};
use fleet::{Log, Publisher, counts, fleet_options, wait_all, wait_owners};
use instance::Instance;
use mq_core::QueueName;
use mq_core::testkit::eventually;
use mq_kinesis::{KinesisOptions, RedisLeaseStore};
use redis_server::RedisServer;

const DISCOVERY: Duration = Duration::from_millis(300);
const WINDOW: Duration = Duration::from_secs(3);

/// `ListShards` calls per instance during `WINDOW`.
async fn calls_in_window(counters: &[(&str, RequestCounter)]) -> Vec<(String, usize)> {
    let before: Vec<usize> = counters
        .iter()
        .map(|(_, c)| c.list_shards.load(Ordering::SeqCst))
        .collect();
    tokio::time::sleep(WINDOW).await;
    counters
        .iter()
        .zip(before)
        .map(|((id, c), b)| ((*id).to_owned(), c.list_shards.load(Ordering::SeqCst) - b))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_lists_the_shards_and_another_takes_over_when_it_dies() {
    let test = "fleet_listing";
    let Some(redis) = RedisServer::start_or_skip(test).await else {
        return;
    };
    let stream = "fleet-listing";
    let emu = Emulator::with_stream(stream, 4).await;
    let q = QueueName::new(stream).unwrap();
    let log = Log::default();
    let mut instances = Vec::new();
    let mut counters = Vec::new();
    for id in ["a", "b", "c"] {
        let store = RedisLeaseStore::connect(&redis.url(), "mq").await.unwrap();
        let counter = RequestCounter::default();
        let (endpoint, c) = (emu.endpoint.clone(), counter.clone());
        counters.push((id, counter));
        instances.push(Some(Instance::spawn_with(
            move || emulator::client(&endpoint, true, Some(c), None),
            KinesisOptions::new(Arc::new(store))
                .instance_id(id)
                .discovery_interval(DISCOVERY),
            q.clone(),
            log.handler(id),
            fleet_options(),
        )));
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
    let publisher = Publisher::start(emu.client(), &q, 64, 8, Duration::from_millis(25)).await;

    let steady = calls_in_window(&counters).await;
    let total: usize = steady.iter().map(|(_, n)| n).sum();
    // what one instance lists on its own: the most any instance listed (the leader's count)
    let one_instance = steady.iter().map(|(_, n)| *n).max().unwrap_or(0);
    println!(
        "ListShards calls in {WINDOW:?} with a discovery interval of {DISCOVERY:?}: {steady:?}, \
         total {total} (the most of one instance: {one_instance})"
    );
    let ratio = |total: usize| total as f64 / one_instance.max(1) as f64;
    println!(
        "target ListShards calls of 3 instances in one instance's worth: {:.2} (goal <= 1.5) {}",
        ratio(total),
        if ratio(total) <= 1.5 {
            "met"
        } else {
            "NOT met"
        }
    );
    assert!(one_instance > 0, "nobody listed the shards");
    assert!(ratio(total) <= 1.5, "{total} ListShards calls");
    let (leader, _) = steady
        .iter()
        .max_by_key(|(_, n)| *n)
        .cloned()
        .expect("three instances");

    // the leader dies: another one leads, within a few discovery intervals
    let idx = ["a", "b", "c"]
        .iter()
        .position(|id| *id == leader)
        .expect("a known instance");
    let dead = instances[idx].take().expect("running");
    tokio::task::spawn_blocking(move || dead.crash())
        .await
        .unwrap();
    let killed = Instant::now();
    let survivors: Vec<(&str, RequestCounter)> = counters
        .iter()
        .filter(|(id, _)| *id != leader)
        .cloned()
        .collect();
    // a split made now must be seen through the new leader's listing
    let first = emulator::shard_ids(&emu.client(), stream).await.remove(0);
    emu.split_in_half(stream, &first).await;
    let children: Vec<String> = emulator::shard_ids(&emu.client(), stream)
        .await
        .into_iter()
        .filter(|s| s.as_str() > "shardId-000000000003")
        .collect();
    assert_eq!(children.len(), 2, "{children:?}");
    let l = log.clone();
    let c = children.clone();
    eventually(
        Duration::from_secs(30),
        "the split's children read after the leader died",
        move || {
            let read: std::collections::HashSet<String> =
                l.deliveries().into_iter().map(|d| d.shard).collect();
            c.iter().all(|s| read.contains(s))
        },
    )
    .await;
    println!(
        "leader {leader} killed; the split's children were read {:?} after",
        killed.elapsed()
    );
    let after = calls_in_window(&survivors).await;
    let total: usize = after.iter().map(|(_, n)| n).sum();
    println!("ListShards calls in {WINDOW:?} after the leader died: {after:?}, total {total}");
    println!(
        "target ListShards calls of 2 instances after the leader died, in one instance's worth: \
         {:.2} (goal <= 1.5) {}",
        ratio(total),
        if ratio(total) <= 1.5 {
            "met"
        } else {
            "NOT met"
        }
    );
    assert!(ratio(total) <= 1.5, "{total} ListShards calls");

    let published = publisher.stop().await;
    wait_all(&log, published, Duration::from_secs(60)).await;
    let lost = published - log.distinct() as u64;
    println!("published {published}, lost {lost}");
    assert_eq!(lost, 0);
    for i in instances.into_iter().flatten() {
        tokio::task::spawn_blocking(move || i.stop()).await.unwrap();
    }
}
