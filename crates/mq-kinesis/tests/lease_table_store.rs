//! `TableLeaseStore`: the lease-store conformance suite on every lease table (in-memory,
//! PostgreSQL, MariaDB, SQLite, MongoDB), and the session rule the table store adds: a
//! membership renewal that arrives after a taker ended the membership fails.

use std::sync::Arc;
use std::time::Duration;

use mq_core::async_trait;
use mq_core::backend::{LeaseTable, MemoryLeaseTable, TableRecord};
use mq_kinesis::testkit::LeaseStoreFactory;
use mq_kinesis::{LeaseStore, TableLeaseStore};
use tokio::sync::{Notify, Semaphore};

struct Memory;

#[async_trait]
impl LeaseStoreFactory for Memory {
    async fn create(&self, _test: &str) -> Option<Arc<dyn LeaseStore>> {
        Some(Arc::new(TableLeaseStore::new(Arc::new(
            MemoryLeaseTable::new(),
        ))))
    }
}

mod memory {
    mq_kinesis::lease_store_tests!(super::Memory);
}

/// The table of `test`, dropped (with its versions) so a failed run leaves its rows until the
/// case runs again.
fn table_name(test: &str) -> String {
    mq_core::testkit::identifier("mqt_tls_", test, 50)
}

fn url(var: &str, test: &str) -> Option<String> {
    mq_core::testkit::service_url(var)
        .map_err(|reason| eprintln!("skipping {test}: {reason}"))
        .ok()
}

/// A `TableLeaseStore` on a SQL table of the server `$var` names.
macro_rules! sql_factory {
    ($factory:ident, $var:literal, $db:ty, $table:ty) => {
        struct $factory;

        #[async_trait]
        impl LeaseStoreFactory for $factory {
            async fn create(&self, test: &str) -> Option<Arc<dyn LeaseStore>> {
                let url = url($var, test)?;
                let pool = sqlx::pool::PoolOptions::<$db>::new()
                    .max_connections(8)
                    .connect(&url)
                    .await
                    .unwrap();
                let t = table_name(test);
                for drop in [t.clone(), format!("{t}_versions")] {
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {drop}")))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                let table = <$table>::from_pool(pool, t).await.unwrap();
                Some(Arc::new(TableLeaseStore::new(Arc::new(table))))
            }
        }
    };
}

sql_factory!(
    Postgres,
    "MQ_TEST_POSTGRES_URL",
    sqlx::Postgres,
    mq_sql::PgLeaseTable
);
sql_factory!(
    MySql,
    "MQ_TEST_MYSQL_URL",
    sqlx::MySql,
    mq_sql::MySqlLeaseTable
);

struct Sqlite;

#[async_trait]
impl LeaseStoreFactory for Sqlite {
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseStore>> {
        let path = std::env::temp_dir().join(format!("{}.db", table_name(test)));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let url = format!("sqlite://{}", path.display());
        let table = mq_sql::SqliteLeaseTable::connect(&url, "leases")
            .await
            .unwrap();
        Some(Arc::new(TableLeaseStore::new(Arc::new(table))))
    }
}

struct Mongo;

#[async_trait]
impl LeaseStoreFactory for Mongo {
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseStore>> {
        let url = url("MONGODB_URI", test)?;
        let database = table_name(test);
        let client = mongodb::Client::with_uri_str(&url).await.unwrap();
        client.database(&database).drop().await.unwrap();
        let options = mq_mongo::MongoOptions::default()
            .database(database)
            .lease_collection("leases");
        let table = mq_mongo::MongoLeaseTable::from_client(client, options)
            .await
            .unwrap();
        Some(Arc::new(TableLeaseStore::new(Arc::new(table))))
    }
}

mod mongo {
    mq_kinesis::lease_store_tests!(super::Mongo);
}

mod postgres {
    mq_kinesis::lease_store_tests!(super::Postgres);
}

mod mysql {
    mq_kinesis::lease_store_tests!(super::MySql);
}

mod sqlite {
    mq_kinesis::lease_store_tests!(super::Sqlite);
}

/// A memory table whose writes of membership records wait for a permit once `hold` is set:
/// a renewal that has read its membership is paused before it writes.
#[derive(Debug)]
struct Gated {
    inner: MemoryLeaseTable,
    hold: std::sync::atomic::AtomicBool,
    permits: Semaphore,
    waiting: Notify,
}

#[async_trait]
impl LeaseTable for Gated {
    async fn now_ms(&self) -> mq_core::Result<u64> {
        self.inner.now_ms().await
    }
    async fn get(&self, s: &str, k: &str, n: &str) -> mq_core::Result<Option<TableRecord>> {
        self.inner.get(s, k, n).await
    }
    async fn list(&self, s: &str, k: &str) -> mq_core::Result<Vec<(String, TableRecord)>> {
        self.inner.list(s, k).await
    }
    async fn put(
        &self,
        s: &str,
        k: &str,
        n: &str,
        v: &str,
        expected: Option<u64>,
    ) -> mq_core::Result<bool> {
        if k == "membership" && self.hold.load(std::sync::atomic::Ordering::SeqCst) {
            self.waiting.notify_one();
            let permit = self.permits.acquire().await.expect("open");
            permit.forget();
        }
        self.inner.put(s, k, n, v, expected).await
    }
    async fn delete(&self, s: &str, k: &str, n: &str, expected: u64) -> mq_core::Result<bool> {
        self.inner.delete(s, k, n, expected).await
    }
    async fn bump(&self, s: &str, k: &str, n: &str) -> mq_core::Result<u64> {
        self.inner.bump(s, k, n).await
    }
}

/// An instance's renewal reads its membership while it is alive, then stalls (a long GC pause,
/// a slow network) past the membership's expiry; meanwhile another instance takes its shard.
/// When the stalled write lands it must fail: the renewal reports the membership gone, the
/// shard stays with the taker, and the old lease stays fenced. Without the taker ending the
/// membership first, the late write would bring the old membership back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_lands_after_a_takeover_fails() {
    let table = Arc::new(Gated {
        inner: MemoryLeaseTable::new(),
        hold: Default::default(),
        permits: Semaphore::new(0),
        waiting: Notify::new(),
    });
    let store = TableLeaseStore::new(table.clone());
    let ttl = Duration::from_millis(400);
    let long = Duration::from_secs(30);
    store.join("s", "a", "a.1", ttl).await.unwrap();
    let a = store
        .acquire_as_member("s", "shard-0", "a", "a.1", ttl, 0)
        .await
        .unwrap()
        .unwrap();
    let a2 = store
        .acquire_as_member("s", "shard-1", "a", "a.1", ttl, 0)
        .await
        .unwrap()
        .unwrap();
    store.join("s", "b", "b.1", long).await.unwrap();

    // a's renewal reads its (live) membership, then waits at its write
    table.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let waiting = table.waiting.notified();
    let renewal = {
        let store = store.clone();
        tokio::spawn(async move { store.renew_membership("s", "a", "a.1", ttl).await })
    };
    waiting.await;
    table.hold.store(false, std::sync::atomic::Ordering::SeqCst);

    // b takes shard-0 once a's membership expired by the table's clock
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let b = loop {
        if let Some(b) = store
            .acquire_as_member("s", "shard-0", "b", "b.1", long, 0)
            .await
            .unwrap()
        {
            break b;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never got shard-0"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(b.epoch > a.epoch);

    // the stalled write lands now
    table.permits.add_permits(1);
    let renewed = renewal.await.unwrap().unwrap();
    assert!(
        !renewed,
        "a late renewal must not revive an ended membership"
    );
    assert!(
        !store.renew(&a, ttl).await.unwrap(),
        "a's lease of shard-0 is fenced"
    );
    assert!(
        !store.state("s", "shard-1").await.unwrap().live,
        "a's other lease ended with its membership"
    );
    assert!(!store.renew(&a2, ttl).await.unwrap());
    let st = store.state("s", "shard-0").await.unwrap();
    assert_eq!(
        (st.owner.as_deref(), st.epoch, st.live),
        (Some("b"), b.epoch, true)
    );
    assert_eq!(
        store.live_instances("s").await.unwrap(),
        vec!["b".to_owned()]
    );
}
