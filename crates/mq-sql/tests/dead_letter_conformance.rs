//! The dead-letter store and replay suites on PostgreSQL, MariaDB/MySQL and SQLite, one table per case.

use std::sync::Arc;

use mq_core::DeadLetterStore;
use mq_core::testkit::dead_letter::{DeadLetterStoreFactory as StoreFactory, table_name};
use mq_core::testkit::service_url;
use mq_sql::sqlx::{self, Executor};
use mq_sql::{MySqlDeadLetterStore, PgDeadLetterStore, SqliteDeadLetterStore};

mod postgres {
    use super::*;

    pub(crate) struct Pg;

    #[async_trait::async_trait]
    impl StoreFactory for Pg {
        fn skip_reason(&self) -> Option<String> {
            service_url("MQ_TEST_POSTGRES_URL").err()
        }
        async fn create(&self, test: &str) -> Arc<dyn DeadLetterStore> {
            let url = service_url("MQ_TEST_POSTGRES_URL").expect("checked by skip_reason");
            let pool = sqlx::PgPool::connect(&url).await.expect("connect");
            let table = format!("pg_{}", table_name(test));
            pool.execute(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
                .await
                .expect("drop");
            let store = PgDeadLetterStore::new(pool, table).expect("store");
            store.migrate().await.expect("migrate");
            store.migrate().await.expect("migrate is idempotent");
            Arc::new(store)
        }
    }

    mq_core::dead_letter_store_tests!(Pg);
    mq_dlq::replay_conformance_tests!(Pg);
}

mod mysql {
    use super::*;

    pub(crate) struct My;

    #[async_trait::async_trait]
    impl StoreFactory for My {
        fn skip_reason(&self) -> Option<String> {
            service_url("MQ_TEST_MYSQL_URL").err()
        }
        async fn create(&self, test: &str) -> Arc<dyn DeadLetterStore> {
            let url = service_url("MQ_TEST_MYSQL_URL").expect("checked by skip_reason");
            let pool = sqlx::MySqlPool::connect(&url).await.expect("connect");
            let table = format!("my_{}", table_name(test));
            pool.execute(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
                .await
                .expect("drop");
            let store = MySqlDeadLetterStore::new(pool, table).expect("store");
            store.migrate().await.expect("migrate");
            store.migrate().await.expect("migrate is idempotent");
            Arc::new(store)
        }
    }

    mq_core::dead_letter_store_tests!(My);
    mq_dlq::replay_conformance_tests!(My);
}

mod sqlite {
    use super::*;

    pub(crate) struct Lite;

    #[async_trait::async_trait]
    impl StoreFactory for Lite {
        async fn create(&self, test: &str) -> Arc<dyn DeadLetterStore> {
            let dir =
                std::env::temp_dir().join(format!("mq-sql-dead-letters-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join(format!("{}.db", table_name(test)));
            let _ = std::fs::remove_file(&path);
            let url = format!("sqlite://{}?mode=rwc", path.display());
            let pool = sqlx::SqlitePool::connect(&url).await.expect("connect");
            let store = SqliteDeadLetterStore::new(pool, "dead_letters").expect("store");
            store.migrate().await.expect("migrate");
            store.migrate().await.expect("migrate is idempotent");
            Arc::new(store)
        }
    }

    mq_core::dead_letter_store_tests!(Lite);
    mq_dlq::replay_conformance_tests!(Lite);
}
