//! The lease-table conformance suite on PostgreSQL, MySQL/MariaDB and SQLite. Each case gets its
//! own table (SQLite: its own file), dropped when the case starts.

use std::sync::Arc;

use mq_core::async_trait;
use mq_core::backend::LeaseTable;
use mq_core::testkit::lease_table::LeaseTableFactory;
use mq_core::testkit::service_url;
use mq_sql::{MySqlLeaseTable, PgLeaseTable, SqlLeaseTable, SqliteLeaseTable};

fn table(test: &str) -> String {
    let mut t = format!("mqt_lt_{test}");
    t.truncate(50);
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

        impl $factory {
            /// A pool with the table of `test` (and its versions) dropped, and that table's name.
            async fn pool(&self, test: &str) -> Option<(sqlx::Pool<$db>, String)> {
                let url = url($var, test)?;
                let pool = sqlx::pool::PoolOptions::<$db>::new()
                    .max_connections(8)
                    .connect(&url)
                    .await
                    .unwrap();
                let t = table(test);
                for drop in [t.clone(), format!("{t}_versions")] {
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {drop}")))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                Some((pool, t))
            }
        }

        #[async_trait]
        impl LeaseTableFactory for $factory {
            async fn create(&self, test: &str) -> Option<Arc<dyn LeaseTable>> {
                let (pool, t) = self.pool(test).await?;
                let table = SqlLeaseTable::<$db>::from_pool(pool, t).await.unwrap();
                Some(Arc::new(table))
            }
        }
    };
}

server_factory!(Pg, "MQ_TEST_POSTGRES_URL", sqlx::Postgres);
server_factory!(My, "MQ_TEST_MYSQL_URL", sqlx::MySql);

struct Lite;

impl Lite {
    /// The URL of a fresh SQLite file for `test` (an earlier run's file is removed).
    fn url(&self, test: &str) -> String {
        let path = std::env::temp_dir().join(format!("mq-sql-lease-{test}.db"));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        format!("sqlite://{}", path.display())
    }
}

#[async_trait]
impl LeaseTableFactory for Lite {
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseTable>> {
        Some(Arc::new(
            SqliteLeaseTable::connect(&self.url(test), table(test))
                .await
                .expect("open the SQLite lease table"),
        ))
    }
}

mod postgres {
    mq_core::lease_table_tests!(super::Pg);
}

mod mysql {
    mq_core::lease_table_tests!(super::My);
}

mod sqlite {
    mq_core::lease_table_tests!(super::Lite);
}

/// Writes to `first`, then opens its table again with `reopen`: the migrations run a second
/// time and keep every row and version.
async fn reopen_keeps_rows<T, F>(first: T, reopen: impl FnOnce() -> F)
where
    T: LeaseTable,
    F: Future<Output = mq_core::Result<T>>,
{
    let s = mq_core::testkit::lease_table::stream_name("reopen");
    assert!(first.put(&s, "lease", "a", "v1", None).await.unwrap());
    assert!(first.put(&s, "lease", "a", "v2", Some(1)).await.unwrap());
    assert_eq!(first.bump(&s, "meta", "version").await.unwrap(), 1);
    let second = reopen().await.expect("open the table again");
    let r = second.get(&s, "lease", "a").await.unwrap().expect("kept");
    assert_eq!((r.value.as_str(), r.version), ("v2", 2));
    assert_eq!(second.list(&s, "lease").await.unwrap().len(), 1);
    assert_eq!(second.bump(&s, "meta", "version").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_rows_on_postgres() {
    let Some((pool, t)) = Pg.pool("reopen").await else {
        return;
    };
    let first = PgLeaseTable::from_pool(pool.clone(), t.clone())
        .await
        .unwrap();
    reopen_keeps_rows(first, || PgLeaseTable::from_pool(pool, t)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_rows_on_mysql() {
    let Some((pool, t)) = My.pool("reopen").await else {
        return;
    };
    let first = MySqlLeaseTable::from_pool(pool.clone(), t.clone())
        .await
        .unwrap();
    reopen_keeps_rows(first, || MySqlLeaseTable::from_pool(pool, t)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_rows_on_sqlite() {
    let first = SqliteLeaseTable::connect(&Lite.url("reopen"), table("reopen"))
        .await
        .unwrap();
    let (pool, t) = (first.pool().clone(), first.table().to_owned());
    reopen_keeps_rows(first, || SqliteLeaseTable::from_pool(pool, t)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_table_names_are_refused() {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let err = SqliteLeaseTable::from_pool(pool, "x; DROP TABLE y")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("x; DROP TABLE y"), "{err}");
}
