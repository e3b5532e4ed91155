//! The dead-letter store and replay suites on PostgreSQL, MariaDB/MySQL and SQLite, one table per
//! case.

use std::sync::Arc;

use mq_core::DeadLetterStore;
use mq_core::testkit::dead_letter::{DeadLetterStoreFactory as StoreFactory, table_name};
use mq_core::testkit::service_url;
use mq_sql::sqlx::{self, Executor};
use mq_sql::{SqlDeadLetterStore, SqliteDeadLetterStore};

/// The suites in module `$module` on the server named by `$var`: one table per case, dropped
/// first.
macro_rules! on_server {
    ($module:ident, $var:literal, $db:ty, $prefix:literal) => {
        mod $module {
            use super::*;

            pub(crate) struct Server;

            #[async_trait::async_trait]
            impl StoreFactory for Server {
                fn skip_reason(&self) -> Option<String> {
                    service_url($var).err()
                }
                async fn create(&self, test: &str) -> Arc<dyn DeadLetterStore> {
                    let url = service_url($var).expect("checked by skip_reason");
                    let pool = sqlx::Pool::<$db>::connect(&url).await.expect("connect");
                    let table = format!("{}_{}", $prefix, table_name(test));
                    let drop = format!("DROP TABLE IF EXISTS {table}");
                    pool.execute(sqlx::AssertSqlSafe(drop)).await.expect("drop");
                    migrated(SqlDeadLetterStore::<$db>::new(pool, table).expect("store")).await
                }
            }

            mq_core::dead_letter_store_tests!(Server);
            mq_dlq::replay_conformance_tests!(Server);
        }
    };
}

on_server!(postgres, "MQ_TEST_POSTGRES_URL", sqlx::Postgres, "pg");
on_server!(mysql, "MQ_TEST_MYSQL_URL", sqlx::MySql, "my");

/// `store`, migrated twice (migrating is idempotent).
async fn migrated<S: DeadLetterStore + 'static>(store: S) -> Arc<dyn DeadLetterStore> {
    store.migrate().await.expect("migrate");
    store.migrate().await.expect("migrate is idempotent");
    Arc::new(store)
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
            migrated(SqliteDeadLetterStore::new(pool, "dead_letters").expect("store")).await
        }
    }

    mq_core::dead_letter_store_tests!(Lite);
    mq_dlq::replay_conformance_tests!(Lite);
}
