//! A stale owner with an old epoch cannot move a durable checkpoint, backwards or forwards, after
//! the Redis holding the leases forgot everything; it is fenced as soon as someone asks for the
//! shard, which is handed out only after the recovery wait; the new owner's epoch is above the
//! durable one and it resumes from the durable checkpoint. On PostgreSQL, MariaDB, MongoDB and SQLite.

#[path = "common/durable.rs"]
mod durable;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use mq_core::backend::CheckpointStore;
use mq_kinesis::{CheckpointOutcome, DurableLeaseStore, LeaseStore, RedisLeaseStore};
use redis_server::RedisServer;

const TTL: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_millis(300);

async fn stale_owner_after_a_wipe(test: &str, checkpoints: Arc<dyn CheckpointStore>) {
    let Some(redis) = RedisServer::start_or_skip(test).await else {
        return;
    };
    let leases = Arc::new(RedisLeaseStore::connect(&redis.url(), "mq").await.unwrap());
    let store = DurableLeaseStore::new(leases, checkpoints.clone()).recovery_wait(WAIT);
    let s = "stream";
    // earlier history: a few owners came and went
    for owner in ["x", "y", "z"] {
        let l = store.acquire(s, "sh", owner, TTL).await.unwrap().unwrap();
        assert!(store.release(&l).await.unwrap());
    }
    let a = store.acquire(s, "sh", "a", TTL).await.unwrap().unwrap();
    assert_eq!(a.epoch, 4);
    assert_eq!(
        store.checkpoint(&a, "100").await.unwrap(),
        CheckpointOutcome::Advanced
    );

    redis.flushall().await;
    // "a" may still be reading: the shard is not handed out at once, but "a" is fenced at once
    let asked = std::time::Instant::now();
    assert!(store.acquire(s, "sh", "b", TTL).await.unwrap().is_none());
    assert_eq!(
        store.checkpoint(&a, "110").await.unwrap(),
        CheckpointOutcome::Fenced,
        "the last owner is fenced while the new one waits"
    );
    // Redis alone would hand out epoch 1 again; the durable floor keeps epochs increasing
    let b = loop {
        if let Some(b) = store.acquire(s, "sh", "b", TTL).await.unwrap() {
            break b;
        }
        assert!(asked.elapsed() < WAIT * 10, "not acquired after the wait");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        asked.elapsed() >= WAIT,
        "acquired after {:?}, before the recovery wait of {WAIT:?}",
        asked.elapsed()
    );
    assert!(b.epoch > a.epoch, "epoch {} after {}", b.epoch, a.epoch);
    assert_eq!(
        b.checkpoint.as_deref(),
        Some("100"),
        "resumes from the durable checkpoint"
    );

    // the stale owner: neither forwards nor backwards, nor renew
    assert_eq!(
        store.checkpoint(&a, "200").await.unwrap(),
        CheckpointOutcome::Fenced
    );
    assert_eq!(
        store.checkpoint(&a, "50").await.unwrap(),
        CheckpointOutcome::Fenced
    );
    assert!(!store.renew(&a, TTL).await.unwrap());
    let stored = checkpoints.load(s, "sh").await.unwrap().unwrap();
    assert_eq!(stored.sequence_number.as_deref(), Some("100"));
    assert_eq!(stored.epoch, b.epoch);

    // the stale owner cannot even go through the durable store directly
    assert_eq!(
        checkpoints.save(s, "sh", a.epoch, "300").await.unwrap(),
        CheckpointOutcome::Fenced
    );
    assert_eq!(
        store.checkpoint(&b, "150").await.unwrap(),
        CheckpointOutcome::Advanced
    );
    assert_eq!(
        store.checkpoint(&b, "120").await.unwrap(),
        CheckpointOutcome::NotForward
    );
    assert_eq!(
        store.state(s, "sh").await.unwrap().checkpoint.as_deref(),
        Some("150")
    );

    // two wipes in a row between reading the floor and recording the epoch: Redis hands the
    // same epoch to two owners, and the durable store tells them apart (the one that records it
    // second is told so, and DurableLeaseStore gives such a lease back)
    redis.flushall().await;
    let floor = checkpoints.max_epoch(s, "sh").await.unwrap();
    let raw = RedisLeaseStore::connect(&redis.url(), "mq").await.unwrap();
    let c = raw
        .acquire_above(s, "sh", "c", TTL, floor)
        .await
        .unwrap()
        .unwrap();
    redis.flushall().await;
    let d = raw
        .acquire_above(s, "sh", "d", TTL, floor)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.epoch, d.epoch);
    assert!(checkpoints.observe_epoch(s, "sh", c.epoch).await.unwrap() < c.epoch);
    assert!(checkpoints.observe_epoch(s, "sh", d.epoch).await.unwrap() >= d.epoch);
    assert_eq!(
        store.checkpoint(&b, "160").await.unwrap(),
        CheckpointOutcome::Fenced
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_is_fenced_on_postgres() {
    if let Some(c) = durable::postgres("stale_owner_pg").await {
        stale_owner_after_a_wipe("stale_owner_is_fenced_on_postgres", c).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_is_fenced_on_mysql() {
    if let Some(c) = durable::mysql("stale_owner_my").await {
        stale_owner_after_a_wipe("stale_owner_is_fenced_on_mysql", c).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_is_fenced_on_mongo() {
    if let Some(c) = durable::mongo("stale_owner_mg").await {
        stale_owner_after_a_wipe("stale_owner_is_fenced_on_mongo", c).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_is_fenced_on_sqlite() {
    let c = durable::sqlite("stale_owner_lite").await;
    stale_owner_after_a_wipe("stale_owner_is_fenced_on_sqlite", c).await;
}
