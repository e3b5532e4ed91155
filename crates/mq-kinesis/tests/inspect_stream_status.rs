//! `stream_status` reports each shard's lineage, lease, checkpoint, failure counts and
//! assignment through the lease store, with the live instances.

#[path = "common/emulator.rs"]
mod emulator;

use std::sync::Arc;
use std::time::Duration;

use emulator::Emulator;
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue, LeaseStore, stream_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_leases_checkpoints_failures_lineage_and_assignment() {
    let stream = "inspected";
    let emu = Emulator::with_stream(stream, 2).await;
    let c = emu.client();
    let parent = emulator::shard_ids(&c, stream).await.remove(0);
    emu.split_in_half(stream, &parent).await;

    let store = Arc::new(InMemoryLeaseStore::new());
    let ttl = Duration::from_secs(30);
    let lease = store
        .acquire(stream, &parent, "instance-a", ttl)
        .await
        .unwrap()
        .expect("free");
    store.checkpoint(&lease, "42").await.unwrap();
    store.record_failure(stream, &parent, "42").await.unwrap();
    store.record_failure(stream, &parent, "42").await.unwrap();
    store
        .heartbeat(stream, "instance-a", Duration::from_secs(30))
        .await
        .unwrap();
    // a shard the store knows but the stream no longer lists
    store
        .set_checkpoint(stream, "shardId-gone", "7")
        .await
        .unwrap();

    let status = stream_status(&c, store.as_ref(), stream).await.unwrap();
    assert_eq!(status.stream, stream);
    assert_eq!(status.live_instances, ["instance-a"]);
    let ids: Vec<&str> = status.shards.iter().map(|s| s.shard.as_str()).collect();
    assert_eq!(
        ids.len(),
        5,
        "two shards, two split children, one unlisted: {ids:?}"
    );
    let p = status.shards.iter().find(|s| s.shard == parent).unwrap();
    assert!(p.listed && p.closed, "{p:?}");
    assert!(p.ending_sequence_number.is_some(), "{p:?}");
    assert_eq!(p.children.len(), 2, "{p:?}");
    assert_eq!(p.lease.owner.as_deref(), Some("instance-a"));
    assert_eq!(p.lease.epoch, lease.epoch);
    assert!(p.lease.live && p.lease.expires_at_ms > 0);
    assert_eq!(p.lease.checkpoint.as_deref(), Some("42"));
    assert_eq!(p.failures.get("42"), Some(&2));
    assert_eq!(p.assigned_to.as_deref(), Some("instance-a"));
    assert!(!p.waiting_for_parents);
    for child in &p.children {
        let c = status.shards.iter().find(|s| &s.shard == child).unwrap();
        assert_eq!(c.parent.as_deref(), Some(parent.as_str()));
        assert!(c.waiting_for_parents, "{c:?}");
        assert!(c.assigned_to.is_none(), "{c:?}");
        assert_eq!(c.lease.epoch, 0, "never acquired");
    }
    let gone = status
        .shards
        .iter()
        .find(|s| s.shard == "shardId-gone")
        .unwrap();
    assert!(!gone.listed && !gone.waiting_for_parents);
    assert_eq!(gone.lease.checkpoint.as_deref(), Some("7"));

    // the queue reads through its own lease store
    let queue = KinesisQueue::with_client(c.clone(), KinesisOptions::new(store.clone()));
    assert_eq!(queue.stream_status(stream).await.unwrap(), status);
}
