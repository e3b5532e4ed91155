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

/// The Redis key prefix of `test` on one pairing: the same case runs on every pairing at
/// once, so each cleans up only its own keys.
fn redis_prefix(checkpoints: Checkpoints, test: &str) -> String {
    format!("mqtest-durable-{checkpoints:?}-{test}-")
}

async fn redis(checkpoints: Checkpoints, test: &str) -> Option<Arc<dyn LeaseStore>> {
    let url = durable::url("REDIS_URL", test)?;
    let prefix = format!("{}{}", redis_prefix(checkpoints, test), ulid::Ulid::new());
    Some(Arc::new(
        RedisLeaseStore::connect(&url, prefix).await.unwrap(),
    ))
}

/// Where a pairing keeps its leases.
#[derive(Clone, Copy)]
enum Leases {
    Redis,
    Memory,
}

/// Where a pairing keeps its checkpoints and epoch fence.
#[derive(Debug, Clone, Copy)]
enum Checkpoints {
    Postgres,
    MySql,
    Mongo,
    Sqlite,
    Memory,
}

/// A `DurableLeaseStore` over one (lease store, checkpoint store) pairing; `None` when a
/// service of the pairing is not configured.
struct Durable(Leases, Checkpoints);

#[mq_core::async_trait]
impl LeaseStoreFactory for Durable {
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseStore>> {
        let leases = match self.0 {
            Leases::Redis => redis(self.1, test).await?,
            Leases::Memory => Arc::new(InMemoryLeaseStore::new()),
        };
        let checkpoints = match self.1 {
            Checkpoints::Postgres => durable::postgres(&format!("pg_{test}")).await?,
            Checkpoints::MySql => durable::mysql(&format!("my_{test}")).await?,
            Checkpoints::Mongo => durable::mongo(&format!("mg_{test}")).await?,
            Checkpoints::Sqlite => durable::sqlite(&format!("lite_{test}")).await,
            Checkpoints::Memory => Arc::new(MemoryCheckpointStore::new()),
        };
        Some(Arc::new(DurableLeaseStore::new(leases, checkpoints)))
    }

    async fn cleanup(&self, test: &str) {
        if let Leases::Redis = self.0 {
            redis_keys::delete_matching(&format!("{}*", redis_prefix(self.1, test)));
        }
    }
}

mod redis_postgres {
    use super::{Checkpoints, Durable, Leases};
    mq_kinesis::lease_store_tests!(Durable(Leases::Redis, Checkpoints::Postgres));
}

mod redis_mysql {
    use super::{Checkpoints, Durable, Leases};
    mq_kinesis::lease_store_tests!(Durable(Leases::Redis, Checkpoints::MySql));
}

mod redis_mongo {
    use super::{Checkpoints, Durable, Leases};
    mq_kinesis::lease_store_tests!(Durable(Leases::Redis, Checkpoints::Mongo));
}

mod memory_sqlite {
    use super::{Checkpoints, Durable, Leases};
    mq_kinesis::lease_store_tests!(Durable(Leases::Memory, Checkpoints::Sqlite));
}

mod memory_memory {
    use super::{Checkpoints, Durable, Leases};
    mq_kinesis::lease_store_tests!(Durable(Leases::Memory, Checkpoints::Memory));
}
