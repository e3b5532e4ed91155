//! A stale owner with an old epoch cannot move a durable checkpoint, backwards or forwards, after
//! the Redis holding the leases forgot everything; it is fenced as soon as someone asks for the
//! shard, which is handed out only after the recovery wait; the new owner's epoch is above the
//! durable one and it resumes from the durable checkpoint. On PostgreSQL, MariaDB, MongoDB and SQLite.
//! The same when a failover loses only the renewals of a membership its owner kept alive: the
//! lease looks expired with its epoch unchanged, and is still handed out only after the
//! recovery wait, while a lease that ended without a failover is taken at once.

#[path = "common/durable.rs"]
mod durable;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mq_core::backend::CheckpointStore;
use mq_core::testkit::wait_until;
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
    let asked = Instant::now();
    assert!(store.acquire(s, "sh", "b", TTL).await.unwrap().is_none());
    assert_eq!(
        store.checkpoint(&a, "110").await.unwrap(),
        CheckpointOutcome::Fenced,
        "the last owner is fenced while the new one waits"
    );
    // Redis alone would hand out epoch 1 again; the durable floor keeps epochs increasing
    let st = &store;
    let b = acquired_within(|| async move { st.acquire(s, "sh", "b", TTL).await.unwrap() }).await;
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

/// How long a membership lasts without renewal in the failover case.
const MEMBERSHIP: Duration = Duration::from_secs(1);

/// Asks `acquire` every 20 ms until it hands out a lease, for up to ten recovery waits.
async fn acquired_within<F, Fut>(mut acquire: F) -> mq_kinesis::Lease
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<mq_kinesis::Lease>>,
{
    let asked = Instant::now();
    loop {
        if let Some(l) = acquire().await {
            return l;
        }
        assert!(asked.elapsed() < WAIT * 10, "not acquired after the wait");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A failover to a replica that missed the renewals of a live membership: in the replica the
/// membership has ended, so its lease looks free, with the epoch the durable store knows.
async fn renewals_lost_in_a_failover(test: &str, checkpoints: Arc<dyn CheckpointStore>) {
    let Some(mut redis) = RedisServer::start_or_skip(test).await else {
        return;
    };
    let connect = |url: String| async move {
        Arc::new(RedisLeaseStore::connect(&url, "mq").await.unwrap()) as Arc<dyn LeaseStore>
    };
    let store =
        DurableLeaseStore::new(connect(redis.url()).await, checkpoints.clone()).recovery_wait(WAIT);
    let s = "stream";
    store.join(s, "a", "a.1", MEMBERSHIP).await.unwrap();
    let a = store
        .acquire_as_member(s, "sh", "a", "a.1", TTL, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.checkpoint(&a, "100").await.unwrap(),
        CheckpointOutcome::Advanced
    );
    // the replica's copy, in which a.1 ends one membership TTL from now
    redis.snapshot().await;
    // "a" keeps its membership alive past that; the replica misses every renewal
    let snapshot = Instant::now();
    while snapshot.elapsed() < MEMBERSHIP + MEMBERSHIP / 2 {
        assert!(
            store
                .renew_membership(s, "a", "a.1", MEMBERSHIP)
                .await
                .unwrap()
        );
        tokio::time::sleep(MEMBERSHIP / 4).await;
    }
    assert!(store.state(s, "sh").await.unwrap().live, "kept alive by a");
    redis.restore_snapshot().await;

    // another instance, on the promoted replica
    let store = DurableLeaseStore::new(connect(redis.url()).await, checkpoints).recovery_wait(WAIT);
    let seen = store.state(s, "sh").await.unwrap();
    assert!(!seen.live, "the replica lost the renewals: {seen:?}");
    assert_eq!(seen.epoch, a.epoch, "nothing tells the epochs apart");
    assert!(seen.expiry_unconfirmed, "{seen:?}");
    store.join(s, "b", "b.1", TTL).await.unwrap();
    let asked = Instant::now();
    assert!(
        store
            .acquire_as_member(s, "sh", "b", "b.1", TTL, 0)
            .await
            .unwrap()
            .is_none(),
        "handed out at once, while its owner may still be reading"
    );
    assert!(
        !store.confirm_epoch(&a).await.unwrap(),
        "the owner is fenced while the new one waits"
    );
    let st = &store;
    let b = acquired_within(|| async move {
        st.acquire_as_member(s, "sh", "b", "b.1", TTL, 0)
            .await
            .unwrap()
    })
    .await;
    assert!(
        asked.elapsed() >= WAIT,
        "acquired after {:?}, before the recovery wait of {WAIT:?}",
        asked.elapsed()
    );
    assert!(b.epoch > a.epoch, "epoch {} after {}", b.epoch, a.epoch);
    assert_eq!(b.checkpoint.as_deref(), Some("100"));
    assert_eq!(
        store.checkpoint(&a, "110").await.unwrap(),
        CheckpointOutcome::Fenced
    );

    // with no failover since, a membership that ends is vouched for: its shard is taken at once
    store.join(s, "c", "c.1", MEMBERSHIP).await.unwrap();
    let c = store
        .acquire_as_member(s, "sh-2", "c", "c.1", TTL, 0)
        .await
        .unwrap()
        .unwrap();
    wait_until(MEMBERSHIP * 3, "c.1 ended", || async move {
        !st.state(s, "sh-2").await.unwrap().live
    })
    .await;
    let seen = store.state(s, "sh-2").await.unwrap();
    assert!(!seen.expiry_unconfirmed, "{seen:?}");
    let d = store
        .acquire_as_member(s, "sh-2", "b", "b.1", TTL, 0)
        .await
        .unwrap()
        .expect("taken at once");
    assert!(d.epoch > c.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_lost_in_a_failover_wait_on_postgres() {
    if let Some(c) = durable::postgres("lost_renewals_pg").await {
        renewals_lost_in_a_failover("renewals_lost_in_a_failover_wait_on_postgres", c).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_lost_in_a_failover_wait_on_sqlite() {
    let c = durable::sqlite("lost_renewals_lite").await;
    renewals_lost_in_a_failover("renewals_lost_in_a_failover_wait_on_sqlite", c).await;
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
