//! `stream_status` after the record of a finished parent was forgotten (its children started):
//! the parent still shows as finished, unassigned, and its children as readable, as the
//! consumers see them. On the in-memory store and on Redis.

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/redis_keys.rs"]
mod redis_keys;

use std::sync::Arc;
use std::time::Duration;

use emulator::Emulator;
use mq_kinesis::{InMemoryLeaseStore, LeaseStore, RedisLeaseStore, stream_status};

async fn pruned_parent_shows_as_finished(test: &str, store: Arc<dyn LeaseStore>) {
    let stream = test.replace('_', "-");
    let emu = Emulator::with_stream(&stream, 1).await;
    let c = emu.client();
    let parent = emulator::shard_ids(&c, &stream).await.remove(0);
    emu.split_in_half(&stream, &parent).await;
    let ttl = Duration::from_secs(30);
    store.heartbeat(&stream, "instance-a", ttl).await.unwrap();

    // the parent is read to its end, its children are started, its record is forgotten
    let lease = store
        .acquire(&stream, &parent, "instance-a", ttl)
        .await
        .unwrap()
        .expect("free");
    assert!(store.finish(&lease).await.unwrap());
    let status = stream_status(&c, store.as_ref(), &stream).await.unwrap();
    let children: Vec<String> = status
        .shards
        .iter()
        .find(|s| s.shard == parent)
        .map(|p| p.children.clone())
        .unwrap();
    assert_eq!(children.len(), 2, "{status:?}");
    for child in &children {
        store
            .acquire(&stream, child, "instance-a", ttl)
            .await
            .unwrap()
            .expect("free");
    }
    assert!(store.forget_finished(&stream, &parent).await.unwrap());
    assert!(
        store
            .leases(&stream)
            .await
            .unwrap()
            .iter()
            .all(|l| l.shard != parent),
        "the parent's record is forgotten"
    );

    let status = stream_status(&c, store.as_ref(), &stream).await.unwrap();
    let p = status.shards.iter().find(|s| s.shard == parent).unwrap();
    assert!(p.listed && p.closed, "{p:?}");
    assert!(
        p.lease.finished,
        "a pruned finished parent shows as finished: {p:?}"
    );
    assert!(p.lease.owner.is_none() && !p.lease.live, "{p:?}");
    assert!(
        p.assigned_to.is_none(),
        "a finished shard is never assigned: {p:?}"
    );
    assert!(!p.waiting_for_parents, "{p:?}");
    for child in &children {
        let s = status.shards.iter().find(|s| &s.shard == child).unwrap();
        assert!(!s.lease.finished, "{s:?}");
        assert!(!s.waiting_for_parents, "its parent is finished: {s:?}");
        assert_eq!(s.assigned_to.as_deref(), Some("instance-a"), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_pruned_parent_shows_as_finished() {
    pruned_parent_shows_as_finished("pruned_memory", Arc::new(InMemoryLeaseStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pruned_parent_shows_as_finished() {
    let test = "pruned_redis";
    let url = match mq_core::testkit::service_url("REDIS_URL") {
        Ok(url) => url,
        Err(reason) => {
            eprintln!("skipping {test}: {reason}");
            return;
        }
    };
    let prefix = format!("mqtest-{test}-{}", ulid::Ulid::new());
    let store = RedisLeaseStore::connect(&url, prefix.clone())
        .await
        .unwrap();
    pruned_parent_shows_as_finished(test, Arc::new(store)).await;
    redis_keys::delete_matching(&format!("{prefix}:*"));
}
