//! A consumer that starts at LATEST reads the children of a split and of a merge from their
//! start: records written to a child before the consumer reaches it (it waits for the parents
//! to finish, then for the next listing) are not skipped.

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/fleet.rs"]
mod fleet;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use emulator::Emulator;
use fleet::{Log, Publisher, fleet_options, publisher_queue};
use mq_core::testkit::eventually;
use mq_core::{MessageQueue, NewMessage, QueueName};
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue, ShardOptions, StartPosition};

/// (key, n) of every message delivered, probes left out.
fn delivered(log: &Log) -> HashSet<(String, u64)> {
    log.deliveries()
        .into_iter()
        .flat_map(|d| d.messages)
        .filter(|(_, key, _)| !key.starts_with("probe"))
        .map(|(_, key, n)| (key, n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_consumer_reads_children_of_split_and_merge_from_their_start() {
    let stream = "children-latest";
    let emu = Emulator::with_stream(stream, 4).await;
    let q = QueueName::new(stream).unwrap();
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    // a slow listing: children are found a while after their parents finished, and records
    // keep arriving in them meanwhile
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(store.clone())
            .instance_id("latest")
            .discovery_interval(Duration::from_secs(2))
            .shard(ShardOptions::default().initial_position(StartPosition::Latest)),
    );
    queue.register(&q).await.unwrap();
    let consumer = queue
        .consume(&q, log.handler("latest"), fleet_options())
        .await
        .unwrap();

    // LATEST skips what was written before the iterators exist: probe until every shard of the
    // stream delivered one, so everything published from now on must arrive
    let probes = publisher_queue(emu.client(), &q).await;
    let shards = emulator::shard_ids(&emu.client(), stream).await;
    let mut round = 0u64;
    loop {
        let seen: BTreeSet<String> = log.deliveries().into_iter().map(|d| d.shard).collect();
        if shards.iter().all(|s| seen.contains(s)) {
            break;
        }
        assert!(round < 300, "probes reached only {seen:?}");
        let batch: Vec<NewMessage> = (0..16)
            .map(|i| {
                let key = format!("probe-{round}-{i}");
                NewMessage::new("t", serde_json::json!({"key": key, "n": 0})).partition_key(key)
            })
            .collect();
        let _ = probes.publish(&q, batch).await.unwrap();
        round += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // a handler slower than the load: the parents are read to their ends well after the
    // split, while the children fill up
    log.set_handler_delay(Duration::from_millis(100));
    let publisher = Publisher::start(emu.client(), &q, 200, 20, Duration::from_millis(20)).await;
    let wait_more = |more: usize, what: &'static str| {
        let l = log.clone();
        let seen = delivered(&log).len();
        eventually(Duration::from_secs(30), what, move || {
            delivered(&l).len() > seen + more
        })
    };
    wait_more(300, "load before the split").await;
    let c = emu.client();
    emu.split_in_half(stream, &shards[0]).await;
    wait_more(300, "load after the split").await;
    c.merge_shards()
        .stream_name(stream)
        .shard_to_merge(&shards[2])
        .adjacent_shard_to_merge(&shards[3])
        .send()
        .await
        .unwrap();
    emu.wait_active(stream).await;
    wait_more(300, "load after the merge").await;
    let published = publisher.stop().await;
    let expected: HashSet<(String, u64)> = (0..published)
        .map(|j| (format!("k{}", j % 200), j / 200))
        .collect();
    {
        let (l, e) = (log.clone(), expected.clone());
        // a failure here is a loss: report it below rather than time out without counts
        let _ = tokio::time::timeout(
            Duration::from_secs(60),
            eventually(Duration::from_secs(60), "everything delivered", move || {
                delivered(&l).is_superset(&e)
            }),
        )
        .await;
    }
    consumer.stop().await;

    let got = delivered(&log);
    let lost = expected.difference(&got).count();
    // every record of every child, from its first, was delivered
    let listing = c.list_shards().stream_name(stream).send().await.unwrap();
    let (mut children, mut child_records, mut child_missed) = (0, 0, 0);
    for s in listing.shards() {
        if s.parent_shard_id().is_none() {
            continue;
        }
        children += 1;
        for r in emulator::shard_records(&c, stream, s.shard_id()).await {
            let v: serde_json::Value = serde_json::from_slice(r.data().as_ref()).unwrap();
            let key = v["payload"]["key"].as_str().unwrap_or_default().to_owned();
            let n = v["payload"]["n"].as_u64().unwrap_or_default();
            child_records += 1;
            if !got.contains(&(key, n)) {
                child_missed += 1;
            }
        }
    }
    println!(
        "published {published}, delivered {}, lost {lost}, children {children}, records in children {child_records}, of them not delivered {child_missed}",
        got.len()
    );
    assert_eq!(children, 3, "two split children and one merge child");
    assert!(child_records > 0, "the children received records");
    assert_eq!(child_missed, 0, "children read from their start");
    assert_eq!(lost, 0);
}
