//! The checkpoint-store conformance suite on PostgreSQL, MySQL/MariaDB and SQLite. Each case
//! gets its own table (SQLite: its own file), dropped when the case starts.

use std::sync::Arc;

use mq_core::async_trait;
use mq_core::backend::CheckpointStore;
use mq_core::testkit::checkpoint::CheckpointStoreFactory;
use mq_core::testkit::service_url;
use mq_sql::{SqlCheckpointStore, SqliteCheckpointStore};

fn table(test: &str) -> String {
    let mut t = format!("mqt_ck_{test}");
    t.truncate(60);
    t
}

fn url(var: &str, test: &str) -> Option<String> {
    match service_url(var) {
        Ok(u) => Some(u),
        Err(reason) => {
            eprintln!("skipping {test}: {reason}");
            None
        }
    }
}

/// A factory on the server named by `$var`: one table per case, dropped first.
macro_rules! server_factory {
    ($factory:ident, $var:literal, $db:ty) => {
        struct $factory;

        #[async_trait]
        impl CheckpointStoreFactory for $factory {
            async fn create(&self, test: &str) -> Option<Arc<dyn CheckpointStore>> {
                let url = url($var, test)?;
                let pool = sqlx::pool::PoolOptions::<$db>::new()
                    .max_connections(8)
                    .connect(&url)
                    .await
                    .unwrap();
                let t = table(test);
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                    .execute(&pool)
                    .await
                    .unwrap();
                let store = SqlCheckpointStore::<$db>::from_pool(pool, t).await.unwrap();
                Some(Arc::new(store))
            }
        }
    };
}

server_factory!(Pg, "MQ_TEST_POSTGRES_URL", sqlx::Postgres);
server_factory!(My, "MQ_TEST_MYSQL_URL", sqlx::MySql);

struct Lite;

#[async_trait]
impl CheckpointStoreFactory for Lite {
    async fn create(&self, test: &str) -> Option<Arc<dyn CheckpointStore>> {
        let path = std::env::temp_dir().join(format!("mq-sql-ckpt-{test}.db"));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let url = format!("sqlite://{}", path.display());
        Some(Arc::new(
            SqliteCheckpointStore::connect(&url, table(test))
                .await
                .expect("open the SQLite checkpoint store"),
        ))
    }
}

mod postgres {
    mq_core::checkpoint_store_tests!(super::Pg);
}

mod mysql {
    mq_core::checkpoint_store_tests!(super::My);
}

mod sqlite {
    mq_core::checkpoint_store_tests!(super::Lite);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_table_names_are_refused() {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let err = SqliteCheckpointStore::from_pool(pool, "x; DROP TABLE y")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("x; DROP TABLE y"), "{err}");
}
