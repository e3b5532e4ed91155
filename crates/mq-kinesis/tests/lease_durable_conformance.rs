//! The lease-store conformance suite on `DurableLeaseStore` over each (lease store, checkpoint
//! store) pairing: (Redis, PostgreSQL), (Redis, MariaDB), (Redis, MongoDB), (in-memory, SQLite)
//! and (in-memory, in-memory).

#[path = "common/durable.rs"]
mod durable;
#[path = "common/redis_keys.rs"]
mod redis_keys;

use std::sync::Arc;

use mq_core::backend::MemoryCheckpointStore;
use mq_kinesis::testkit::LeaseStoreFactory;
use mq_kinesis::{DurableLeaseStore, InMemoryLeaseStore, LeaseStore, RedisLeaseStore};

async fn redis(test: &str) -> Option<Arc<dyn LeaseStore>> {
    let url = durable::url("REDIS_URL", test)?;
    let prefix = format!("mqtest-durable-{test}-{}", ulid::Ulid::new());
    Some(Arc::new(
        RedisLeaseStore::connect(&url, prefix).await.unwrap(),
    ))
}

struct RedisPostgres;

#[mq_core::async_trait]
impl LeaseStoreFactory for RedisPostgres {
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseStore>> {
        let leases = redis(test).await?;
        let checkpoints = durable::postgres(&format!("pg_{test}")).await?;
        Some(Arc::new(DurableLeaseStore::new(leases, checkpoints)))
    }

    async fn cleanup(&self, test: &str) {
        redis_keys::delete_matching(&format!("mqtest-durable-{test}-*"));
    }
}

struct RedisMySql;

#[mq_core::async_trait]
impl LeaseStoreFactory for RedisMySql {
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseStore>> {
        let leases = redis(test).await?;
        let checkpoints = durable::mysql(&format!("my_{test}")).await?;
        Some(Arc::new(DurableLeaseStore::new(leases, checkpoints)))
    }

    async fn cleanup(&self, test: &str) {
        redis_keys::delete_matching(&format!("mqtest-durable-{test}-*"));
    }
}

struct RedisMongo;

#[mq_core::async_trait]
impl LeaseStoreFactory for RedisMongo {
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseStore>> {
        let leases = redis(test).await?;
        let checkpoints = durable::mongo(&format!("mg_{test}")).await?;
        Some(Arc::new(DurableLeaseStore::new(leases, checkpoints)))
    }

    async fn cleanup(&self, test: &str) {
        redis_keys::delete_matching(&format!("mqtest-durable-{test}-*"));
    }
}

struct MemorySqlite;

#[mq_core::async_trait]
impl LeaseStoreFactory for MemorySqlite {
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseStore>> {
        let checkpoints = durable::sqlite(&format!("lite_{test}")).await;
        Some(Arc::new(DurableLeaseStore::new(
            Arc::new(InMemoryLeaseStore::new()),
            checkpoints,
        )))
    }
}

struct MemoryMemory;

#[mq_core::async_trait]
impl LeaseStoreFactory for MemoryMemory {
    async fn create(&self, _test: &str) -> Option<Arc<dyn LeaseStore>> {
        Some(Arc::new(DurableLeaseStore::new(
            Arc::new(InMemoryLeaseStore::new()),
            Arc::new(MemoryCheckpointStore::new()),
        )))
    }
}

mod redis_postgres {
    mq_kinesis::lease_store_tests!(super::RedisPostgres);
}

mod redis_mysql {
    mq_kinesis::lease_store_tests!(super::RedisMySql);
}

mod redis_mongo {
    mq_kinesis::lease_store_tests!(super::RedisMongo);
}

mod memory_sqlite {
    mq_kinesis::lease_store_tests!(super::MemorySqlite);
}

mod memory_memory {
    mq_kinesis::lease_store_tests!(super::MemoryMemory);
}
