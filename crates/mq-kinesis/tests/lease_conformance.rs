//! The lease-store conformance suite on every implementation: in-memory, file and Redis (on the
//! 3-node Redis Cluster, with one and with 16 slot buckets, in `lease_slot_buckets.rs`).

#[path = "common/redis_keys.rs"]
mod redis_keys;

use std::sync::Arc;

use mq_kinesis::testkit::LeaseStoreFactory;
use mq_kinesis::{FileLeaseStore, InMemoryLeaseStore, LeaseStore, RedisLeaseStore};

struct Memory;

#[mq_core::async_trait]
impl LeaseStoreFactory for Memory {
    async fn create(&self, _test: &str) -> Option<Arc<dyn LeaseStore>> {
        Some(Arc::new(InMemoryLeaseStore::new()))
    }
}

struct File;

#[mq_core::async_trait]
impl LeaseStoreFactory for File {
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseStore>> {
        let dir = std::env::temp_dir()
            .join("mq-kinesis-lease-tests")
            .join(format!("{test}-{}", ulid::Ulid::new()));
        Some(Arc::new(FileLeaseStore::new(dir).unwrap()))
    }

    async fn cleanup(&self, test: &str) {
        let root = std::env::temp_dir().join("mq-kinesis-lease-tests");
        let prefix = format!("{test}-");
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

struct Redis;

#[mq_core::async_trait]
impl LeaseStoreFactory for Redis {
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseStore>> {
        match mq_core::testkit::service_url("REDIS_URL") {
            Ok(url) => Some(Arc::new(
                RedisLeaseStore::connect(&url, format!("mqtest-{test}"))
                    .await
                    .unwrap(),
            )),
            Err(reason) => {
                eprintln!("skipping {test}: {reason}");
                None
            }
        }
    }

    async fn cleanup(&self, test: &str) {
        redis_keys::delete_matching(&format!("mqtest-{test}:*"));
    }
}

mod memory {
    mq_kinesis::lease_store_tests!(super::Memory);
}

mod file {
    mq_kinesis::lease_store_tests!(super::File);
}

mod redis {
    mq_kinesis::lease_store_tests!(super::Redis);
}

/// A lock left behind by a crashed process (the old scheme broke such a lock after 10 s, and two
/// processes breaking it at once both went on) never lets two acquirers win: racing acquirers
/// in separate stores on one directory, with a lock file a minute old, give exactly one winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_left_over_lock_never_gives_two_winners() {
    let dir = std::env::temp_dir()
        .join("mq-kinesis-lease-tests")
        .join(format!("left-over-lock-{}", ulid::Ulid::new()));
    for round in 0..50 {
        let stream = format!("s{round}");
        let stream_dir = dir.join(format!("s-s{round}"));
        std::fs::create_dir_all(&stream_dir).unwrap();
        let lock = std::fs::File::create(stream_dir.join(".lock")).unwrap();
        lock.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
            .unwrap();
        drop(lock);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64 {
            let store = FileLeaseStore::new(&dir).unwrap();
            let stream = stream.clone();
            tasks.spawn(async move {
                store
                    .acquire(
                        &stream,
                        "sh",
                        &format!("o{i}"),
                        std::time::Duration::from_secs(30),
                    )
                    .await
                    .unwrap()
                    .is_some()
            });
        }
        let wins = tasks.join_all().await.into_iter().filter(|w| *w).count();
        assert_eq!(wins, 1, "round {round}: {wins} winners");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
