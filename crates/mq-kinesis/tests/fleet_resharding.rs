//! Resharding under load: two instances read a 4-shard stream while messages flow; shard 0 is
//! split and shards 2 and 3 are merged. Nothing is lost, every key keeps its order, each parent
//! is finished in the lease store, and no child is read before its parents' last batch. Then the
//! parents' lease records are forgotten, and the parents are not read again.

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/instance.rs"]
mod instance;

use std::sync::Arc;
use std::time::{Duration, Instant};

use emulator::Emulator;
use fleet::{Log, Publisher, fleet_options, wait_all};
use instance::Instance;
use mq_core::QueueName;
use mq_core::testkit::eventually;
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, LeaseStore};

/// Waits until `more` messages beyond what was delivered so far have been delivered.
async fn wait_more(log: &Log, more: usize, what: &str) {
    let l = log.clone();
    let seen = log.distinct();
    eventually(Duration::from_secs(30), what, move || {
        l.distinct() > seen + more
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_under_load_lose_nothing_and_keep_key_order() {
    let stream = "fleet-reshard";
    let emu = Emulator::with_stream(stream, 4).await;
    let q = QueueName::new(stream).unwrap();
    // one store shared by both instances, as Redis would be: the point here is the order
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    let mut instances = Vec::new();
    for id in ["a", "b"] {
        let o = KinesisOptions::new(store.clone())
            .instance_id(id)
            .discovery_interval(Duration::from_millis(500));
        instances.push(Instance::spawn(
            emu.endpoint.clone(),
            o,
            q.clone(),
            log.handler(id),
            fleet_options(),
        ));
    }
    let publisher = Publisher::start(emu.client(), &q, 200, 20, Duration::from_millis(20)).await;
    wait_more(&log, 500, "some load delivered").await;

    let c = emu.client();
    let first = emulator::shard_ids(&c, stream).await.remove(0);
    emu.split_in_half(stream, &first).await;
    wait_more(&log, 500, "load after the split").await;
    c.merge_shards()
        .stream_name(stream)
        .shard_to_merge("shardId-000000000002")
        .adjacent_shard_to_merge("shardId-000000000003")
        .send()
        .await
        .unwrap();
    emu.wait_active(stream).await;
    wait_more(&log, 500, "load after the merge").await;
    let published = publisher.stop().await;
    wait_all(&log, published, Duration::from_secs(90)).await;

    // lineage from the listing
    let listing = c.list_shards().stream_name(stream).send().await.unwrap();
    let mut checked = 0;
    let deliveries = log.deliveries();
    for s in listing.shards() {
        let parents: Vec<&str> = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
            .into_iter()
            .flatten()
            .collect();
        if parents.is_empty() {
            continue;
        }
        let first_child = deliveries
            .iter()
            .filter(|d| d.shard == s.shard_id())
            .map(|d| d.start)
            .min();
        for p in &parents {
            let st = store.state(stream, p).await.unwrap();
            // finished, or its record already forgotten (its children have theirs)
            assert!(
                st.finished || (st.epoch == 0 && st.owner.is_none()),
                "parent {p} finished in the lease store: {st:?}"
            );
            assert!(
                store.state(stream, s.shard_id()).await.unwrap().epoch > 0,
                "child {} started",
                s.shard_id()
            );
            let last_parent = deliveries
                .iter()
                .filter(|d| d.shard == *p)
                .map(|d| d.end)
                .max();
            if let (Some(child), Some(parent)) = (first_child, last_parent) {
                assert!(
                    parent <= child,
                    "{} read before its parent {p} was done",
                    s.shard_id()
                );
                println!(
                    "{p} -> {}: child started {:?} after the parent's last batch",
                    s.shard_id(),
                    child.duration_since(parent)
                );
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked, 4,
        "two split children and one merge child with two parents"
    );
    let lost = published - log.distinct() as u64;
    let violations = log.order_violations();
    println!(
        "published {published}, lost {lost}, duplicates {}, order violations {}",
        log.duplicates(),
        violations.len()
    );
    assert_eq!(lost, 0);
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(log.overlaps(), 0);

    // the parents' records are forgotten once their children started, and they stay finished
    let forgotten = Instant::now();
    let parents = [
        "shardId-000000000000",
        "shardId-000000000002",
        "shardId-000000000003",
    ];
    let s = store.clone();
    let mut left = Vec::new();
    for _ in 0..1000 {
        let leases = s.leases(stream).await.unwrap();
        left = leases
            .iter()
            .filter(|l| parents.contains(&l.shard.as_str()))
            .map(|l| l.shard.clone())
            .collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "parents' lease records forgotten {:?} after the load ended; left {left:?}",
        forgotten.elapsed()
    );
    assert!(left.is_empty(), "finished parents still recorded: {left:?}");
    let l = log.clone();
    let before = log.deliveries().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again: Vec<_> = l.deliveries()[before..]
        .iter()
        .filter(|d| parents.contains(&d.shard.as_str()))
        .map(|d| d.shard.clone())
        .collect();
    assert!(
        again.is_empty(),
        "a forgotten parent was read again: {again:?}"
    );
    for i in instances {
        tokio::task::spawn_blocking(move || i.stop()).await.unwrap();
    }
}
